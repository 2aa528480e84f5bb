"""Starting, stopping and asking the daemon: what ``up``, ``down`` and ``status`` do.

``up`` starts the daemon as a child process in its own session (stdout/stderr to a log
file in the namespace's state directory) and returns once the daemon answers ``status``
with ``up``; ``--foreground`` runs it in this process (systemd). ``down`` asks the daemon
to stop, and then, whether it answered or not, undoes what the state file records, so
it also works after ``kill -9``, twice in a row, or with nothing up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atlantic.client.config import Config, upstream_url_with_secret
from atlantic.client.control import ControlError, request
from atlantic.client.state import StatePaths, is_daemon_alive, read_state, remove_state

UPSTREAM_ENV = "ATLANTIC_UPSTREAM_URL"  # the child reads the URL here: argv is world-readable
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class LifecycleError(Exception):
    """``up`` or ``down`` could not do its job; the message says why and what to do."""


def _paths(cfg: Config) -> StatePaths:
    return StatePaths.for_namespace(cfg.daemon.state_dir)


def run_foreground(cfg: Config) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT or ``atlantic down``."""
    from atlantic.client.daemon import run_daemon

    _refuse_if_running(cfg)
    cleanup_leftovers(cfg)
    url = os.environ.pop(UPSTREAM_ENV, None) or _secret_url(cfg)
    run_daemon(cfg, url)


def _secret_url(cfg: Config) -> str:
    from atlantic.client.config import ConfigError

    try:
        return upstream_url_with_secret(cfg)
    except ConfigError as exc:
        raise LifecycleError(str(exc)) from None


def _refuse_if_running(cfg: Config) -> None:
    state = read_state(_paths(cfg))
    if state and is_daemon_alive(int(state.get("pid", 0))):
        raise LifecycleError(f"Atlantic is already up (pid {state['pid']}); run `sudo atlantic down` first")


def start_background(cfg: Config, config_arg: str | None) -> dict:
    """Start the daemon in the background; return its status once traffic can flow."""
    _refuse_if_running(cfg)
    paths = _paths(cfg)
    paths.dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "atlantic", "up", "--foreground"]
    if config_arg:
        argv += ["--config", config_arg]
    env = dict(os.environ, **{UPSTREAM_ENV: _secret_url(cfg)})
    with open(paths.log_file, "ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            raise LifecycleError(f"the daemon exited ({code}): {_last_line(paths.log_file)}")
        try:
            reply = request(paths.control_socket, "status", timeout=1.0)
            if reply.get("state") == "up" and reply.get("pid") == child.pid:
                return reply
        except ControlError:
            pass
        time.sleep(0.05)
    child.kill()
    child.wait(5)
    cleanup_leftovers(cfg)
    raise LifecycleError(f"the daemon did not come up within {START_TIMEOUT_S:.0f} s; see {paths.log_file}")


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
    if state is None:
        return "Atlantic is not up; nothing to restore."
    pid = int(state.get("pid", 0))
    if pid and is_daemon_alive(pid):
        try:
            request(paths.control_socket, "stop", timeout=STOP_TIMEOUT_S)
        except ControlError:
            pass
        if not _wait_exit(pid, STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, 2.0)
    failures = cleanup_leftovers(cfg)
    if failures:
        raise LifecycleError("could not restore everything: " + "; ".join(failures))
    return "Atlantic is down; routing is as it was before."


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_daemon_alive(pid):
            return True
        time.sleep(0.02)
    return False


def cleanup_leftovers(cfg: Config) -> list[str]:
    """Undo what a state file records (after a crash); returns lines for steps that failed."""
    from atlantic.system import routing

    paths = _paths(cfg)
    state = read_state(paths)
    if state is None:
        return []
    failures = []
    if state.get("killswitch"):
        from atlantic.system import killswitch

        try:
            killswitch.remove()
        except killswitch.KillSwitchError as exc:
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
    """The daemon's status, or a ``down`` report saying why (never raises)."""
    paths = _paths(cfg)
    state = read_state(paths)
    if state is None:
        return {"state": "down"}
    pid = int(state.get("pid", 0))
    try:
        return request(paths.control_socket, "status", timeout=2.0)
    except ControlError as exc:
        alive = is_daemon_alive(pid)
        return {
            "state": "down",
            "pid": pid,
            "upstream": state.get("upstream"),
            "problem": (
                f"the daemon (pid {pid}) does not answer: {exc}" if alive else
                f"the daemon (pid {pid}) died; its routing is still in place (fail closed): run `sudo atlantic down`"
            ),
        }
