"""Starting, stopping and asking the daemon: what ``up``, ``down`` and ``status`` do.

``up`` starts the daemon as a child process in its own session (stdout/stderr to a log
file in the namespace's state directory) and returns once the daemon answers ``status``
with ``up``; ``--foreground`` runs it in this process (systemd). ``down`` asks the daemon
to stop (or, if its socket does not answer, sends SIGTERM: the same drain), waits for it
to exit, and then undoes what the state file records, so it also works after ``kill -9``,
twice in a row, or with nothing up. SIGKILL is the last resort for a daemon that has not
exited ``STOP_TIMEOUT_S`` after being asked, never the answer to a busy control socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atlantic.client.config import Config
from atlantic.client.config_check import upstream_urls_with_secret
from atlantic.client.control import ControlError, ControlTimeout, daemon_status, request
from atlantic.client.state import (
    StateDirError,
    StatePaths,
    is_daemon_alive,
    open_log,
    read_state,
    remove_state,
)

UPSTREAM_ENV = "ATLANTIC_UPSTREAM_URL"  # the child reads the URLs here (one a line): argv is world-readable
START_TIMEOUT_S = 15.0
STOP_REQUEST_TIMEOUT_S = 5.0  # for the reply to `stop`; then SIGTERM asks the same thing
STOP_TIMEOUT_S = 30.0  # the daemon's own drain and restore are bounded well below this


class LifecycleError(Exception):
    """``up`` or ``down`` could not do its job; the message says why and what to do."""


def _paths(cfg: Config) -> StatePaths:
    return StatePaths.for_namespace(cfg.daemon.state_dir)


def run_foreground(cfg: Config) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT or ``atlantic down``."""
    from atlantic.client.daemon import run_daemon

    _refuse_if_running(cfg)
    # After a crash or a restart for an upgrade the old kill switch is still in place: keep
    # it (this daemon replaces the table atomically) so the machine never opens meanwhile.
    cleanup_leftovers(cfg, keep_killswitch=cfg.capture.kill_switch)
    passed = os.environ.pop(UPSTREAM_ENV, None)
    urls = passed.split("\n") if passed else _secret_urls(cfg)
    os.umask(0o077)  # whatever the daemon writes (state, fake-IP map) is root's alone
    run_daemon(cfg, urls)


def _secret_urls(cfg: Config) -> list[str]:
    from atlantic.client.config import ConfigError

    try:
        return upstream_urls_with_secret(cfg)
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def _refuse_if_running(cfg: Config) -> None:
    state = read_state(_paths(cfg))
    if state and is_daemon_alive(int(state.get("pid", 0))):
        raise LifecycleError(f"Atlantic is already up (pid {state['pid']}); run `sudo atlantic down` first")


def start_background(cfg: Config, config_arg: str | None) -> dict:
    """Start the daemon in the background; return its status once traffic can flow.

    If the daemon runs but its control socket never answered in time (busy), it is left
    running and the error says so; a daemon that answered but never came up is stopped
    the usual way (SIGTERM: drain and restore).
    """
    _refuse_if_running(cfg)
    paths = _paths(cfg)
    env = dict(os.environ, **{UPSTREAM_ENV: "\n".join(_secret_urls(cfg))})
    try:
        log_fd = open_log(paths)
    except (StateDirError, OSError) as exc:
        raise LifecycleError(str(exc)) from None
    argv = [sys.executable, "-m", "atlantic", "up", "--foreground"]
    if config_arg:
        argv += ["--config", config_arg]
    if cfg.daemon.metrics:  # not a secret; the URLs (which may hold one) travel in the environment
        argv += ["--metrics", cfg.daemon.metrics]
    for domain in cfg.tls.intercept:  # the list as in force (the file's, or --intercept)
        argv += ["--intercept", domain]
    if cfg.tls.origin_ca_file is not None:
        argv += ["--origin-ca", str(cfg.tls.origin_ca_file)]
    with os.fdopen(log_fd, "ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    busy = False  # the last poll reached the socket but got no reply in time
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            raise LifecycleError(f"the daemon exited ({code}): {_last_line(paths.log_file)}")
        try:
            reply = request(paths.control_socket, "status", timeout=1.0)
            busy = False
            if reply.get("state") == "up" and reply.get("pid") == child.pid:
                return reply
        except ControlTimeout:
            busy = True
        except ControlError:
            busy = False
        time.sleep(0.05)
    if busy and child.poll() is None:
        raise LifecycleError(
            f"the daemon (pid {child.pid}) runs but its control socket did not answer within "
            f"{START_TIMEOUT_S:.0f} s, so it was left running: check `sudo atlantic status`, "
            "or stop it with `sudo atlantic down`")
    _terminate(child.pid, lambda: child.poll() is not None)  # a daemon that answered but never came up
    child.wait(5)
    cleanup_leftovers(cfg)
    raise LifecycleError(f"the daemon did not come up within {START_TIMEOUT_S:.0f} s; see {paths.log_file}")


def _terminate(pid: int, has_exited, signal_first: bool = True) -> bool:
    """SIGTERM unless it was asked already (the daemon drains and restores either way),
    then SIGKILL if it has not exited within ``STOP_TIMEOUT_S``. True when it was killed."""
    if signal_first:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if _wait(has_exited, STOP_TIMEOUT_S):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait(has_exited, 2.0)
    return True


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def stop(cfg: Config) -> str:
    """Stop the daemon if it runs and restore everything its state file records."""
    paths = _paths(cfg)
    state = read_state(paths)
    lockdown = cfg.capture.lockdown
    if state is None:
        return LOCKDOWN_NOTE if lockdown else _lift_early_killswitch()
    pid = int(state.get("pid", 0))
    killed = False
    if pid and is_daemon_alive(pid):
        killed = _terminate(pid, lambda: not is_daemon_alive(pid), signal_first=not _ask_to_stop(paths, pid))
    failures = cleanup_leftovers(cfg, keep_killswitch=lockdown)
    if failures:
        raise LifecycleError("could not restore everything: " + "; ".join(failures))
    done = "Atlantic is down; routing is as it was before" + (f" ({LOCKDOWN_NOTE})" if lockdown else "")
    if killed:
        return (f"{done} (the daemon did not exit within {STOP_TIMEOUT_S:.0f} s and was killed: its fake-IP "
                f"names were not saved; see {paths.log_file}).")
    return done + "."


LOCKDOWN_NOTE = ("lockdown: the kill switch stays on, nothing leaves this machine until `sudo atlantic "
                 "killswitch remove` or the next `atlantic up`")


def _lift_early_killswitch() -> str:
    """`down` with no daemon: a kill switch still in place came from `atlantic killswitch
    apply` (the early-boot unit) or a daemon whose state is gone; `down` restores the
    machine, so it goes too."""
    from atlantic.system import killswitch

    try:
        active = killswitch.is_active()
    except (killswitch.KillSwitchError, OSError):
        active = False  # no nft to ask (a minimal root): nothing of ours can be in place either
    if not active:
        return "Atlantic is not up; nothing to restore."
    try:
        killswitch.remove()
    except killswitch.KillSwitchError as exc:
        raise LifecycleError(f"Atlantic is not up, but its kill switch could not be lifted: {exc}") from None
    return ("Atlantic was not up; its kill switch (from `atlantic killswitch apply` or the early-boot unit) "
            "is lifted: the machine is open again.")


def _ask_to_stop(paths: StatePaths, pid: int) -> bool:
    """True when the daemon took ``stop`` over its socket; False when it must be signalled."""
    try:
        reply = request(paths.control_socket, "stop", timeout=STOP_REQUEST_TIMEOUT_S)
    except ControlError:
        return False
    return reply.get("state") == "stopping" and reply.get("pid") in (pid, None)


def _wait(has_exited, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited():
            return True
        time.sleep(0.02)
    return has_exited()


def cleanup_leftovers(cfg: Config, *, keep_killswitch: bool = False) -> list[str]:
    """Undo what a state file records (after a crash); returns lines for steps that failed.
    ``keep_killswitch``: leave the kill switch for the daemon about to start."""
    from atlantic.system import routing

    paths = _paths(cfg)
    state = read_state(paths)
    if state is None:
        return []
    failures = []
    if state.get("killswitch") and not keep_killswitch:
        from atlantic.system import killswitch

        try:
            killswitch.remove()
        except killswitch.KillSwitchError as exc:
            failures.append(str(exc))
    if state.get("tcp_redirect"):
        from atlantic.system import redirect

        try:
            redirect.remove()
        except redirect.RedirectError as exc:
            failures.append(str(exc))
    if "routing" in state:
        failures += routing.restore(routing.RoutingPlan.from_json(state["routing"]))
    tun = state.get("tun")
    if tun:
        try:
            routing.delete_link(tun)
        except Exception as exc:  # noqa: BLE001 - report and go on with the rest
            failures.append(f"device {tun}: {exc}")
    remove_state(paths)
    return failures


def status(cfg: Config) -> dict:
    """The daemon's status, or a ``down`` report saying why (never raises; see
    ``control.daemon_status``)."""
    return daemon_status(_paths(cfg))
