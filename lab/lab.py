"""Bring the lab up and down: `up`, `down`, `current`, `set_delay`.

The state file (``/run/atlantic-lab/state.json``) is written before anything is created
and updated after each step, so `down` can clean up after a crash at any point. `down`
also works with no state file at all: it removes whatever ``atl-`` namespaces,
processes in them and /etc/netns dirs it finds. Both hold a lock, so two test sessions
never build the lab at the same time. `proxy_control` fails and restores one of the two
upstream proxies (stop/start its Squid, blackhole/heal its address in the router).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from atlantic.lab import netns, pki, services
from atlantic.lab.media import CACHE_DIR, MediaError, ensure_media
from atlantic.lab.procs import CommandError, cmdline, is_alive, terminate
from atlantic.lab.topology import (
    ALL_ROLES, ORIGIN_NAME, PROXY_NAME, PROXY_ROLES, PROXY_USER, ROLES, SQUID_PORT, LabEnv,
    host_ip, ns_name, squid_dir_name,
)

STATE_DIR = Path(os.environ.get("ATLANTIC_LAB_STATE", "/run/atlantic-lab"))
LOCK_FILE = Path("/run/lock/atlantic-lab.lock")
FAILED_DIR = Path("/tmp/atlantic-lab-failed")  # logs of the last failed `up`
REQUIRED_TOOLS = ("ip", "tc", "sysctl", "squid", "nginx", "nghttpx", "openssl", "htpasswd",
                  "ffmpeg")
LOCK_TIMEOUT_S = 180.0


class LabError(RuntimeError):
    """The lab could not be brought up or down; one line: which step, why, where to look."""


def missing_tools() -> list[str]:
    """Programs the lab needs that are not on PATH."""
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


@contextlib.contextmanager
def _locked():
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as f:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another `lab up/down` holds {LOCK_FILE}; try again later")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _state_file() -> Path:
    return STATE_DIR / "state.json"


def _read_state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(_state_file())


def _env_from_state(state: dict) -> LabEnv | None:
    if state.get("phase") != "up" or "env" not in state:
        return None
    return LabEnv(**state["env"])


def current() -> LabEnv | None:
    """The running lab, or None (not up, half up, or a service or namespace is gone)."""
    state = _read_state()
    env = _env_from_state(state)
    if env is None:
        return None
    # a subset: a stale atl-proxy2 next to a lab built without it is replaced by `up`
    if not {ns_name(r) for r in _roles_built(state)} <= set(netns.lab_namespaces()):
        return None
    if not all(_is_ours(pid, name) for name, pid in state.get("pids", {}).items()):
        return None
    return env


_PROGRAM = {"delayline": "atlantic.lab.delayline", "squid": "squid", "squid2": "squid",
            "nghttpx": "nghttpx", "nginx": "nginx", "dns": "atlantic.lab.dnsserver"}


def _roles_built(state: dict) -> list[str]:
    # a lab built before the second proxy existed records no list: the first four
    return state.get("namespaces", list(ROLES))


def _is_ours(pid: int, name: str) -> bool:
    # a recycled PID must never be mistaken for (or killed as) a lab service
    return is_alive(pid) and _PROGRAM.get(name, name) in cmdline(pid)


def up(delay_ms: float = 20, rate_mbit: float | None = None) -> LabEnv:
    """Bring the lab up (or adjust the running one) and return its description.

    Idempotent: a lab already up with these settings is returned at once; a different
    delay restarts only the delay line, a different rate only re-shapes the links.
    On failure everything created is removed and `LabError` says which step failed.
    """
    _check_can_run()
    with _locked():
        return _up_unlocked(delay_ms, rate_mbit)


def acquire(delay_ms: float = 20, rate_mbit: float | None = None) -> LabEnv:
    """`up`, and register this process as a user of the lab (for shared test sessions).

    A lab held by another live process is joined as it is; asking it for other
    settings raises `LabError` rather than changing the path under the other user.
    """
    _check_can_run()
    with _locked():
        env = current()
        others = [h for h in _live_holders(_read_state()) if h["pid"] != os.getpid()]
        if env is not None and others and (env.delay_ms, env.rate_mbit) != (delay_ms, rate_mbit):
            raise LabError(f"the lab is in use by PID {others[0]['pid']} with delay "
                           f"{env.delay_ms:g} ms; wait for it or use the same settings")
        env = _up_unlocked(delay_ms, rate_mbit)
        state = _read_state()
        state["holders"] = _live_holders(state) + [_holder(os.getpid())]
        _write_state(state)
        return env


def release() -> bool:
    """Unregister this process; take the lab down if no other live user remains.

    Returns True if the lab was taken down.
    """
    with _locked():
        state = _read_state()
        left = [h for h in _live_holders(state) if h["pid"] != os.getpid()]
        if left:
            state["holders"] = left
            _write_state(state)
            return False
        errors = _down_unlocked()
    if errors:
        raise LabError(f"lab down left something behind: {errors[0]}")
    return True


def other_users() -> list[int]:
    """PIDs of other live processes that `acquire`d the lab."""
    return [h["pid"] for h in _live_holders(_read_state()) if h["pid"] != os.getpid()]


def _holder(pid: int) -> dict:
    return {"pid": pid, "start": _start_time(pid)}


def _start_time(pid: int) -> str:
    # with the PID, identifies a process even if the PID is recycled later
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _live_holders(state: dict) -> list[dict]:
    return [h for h in state.get("holders", [])
            if is_alive(h["pid"]) and _start_time(h["pid"]) == h["start"]]


def _check_can_run() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces); run it with sudo")
    if missing := missing_tools():
        raise LabError(f"missing programs: {', '.join(missing)}; install them first")


def _up_unlocked(delay_ms: float, rate_mbit: float | None) -> LabEnv:
    env = current()
    if env is not None:
        if "proxy2" not in _roles_built(_read_state()):
            _add_proxy2(env)
        if env.delay_ms != delay_ms:
            env = _restart_delayline(delay_ms)
        if env.rate_mbit != rate_mbit:
            env = _apply_rate(rate_mbit)
        return env
    _down_unlocked()
    step = "start"
    try:
        step = "generate origin media"
        media = ensure_media()
        return _build(delay_ms, rate_mbit, media)
    except _StepError as e:
        step, err = e.step, e.err
    except (MediaError, CommandError, OSError) as e:
        err = e
    kept = _keep_logs()
    errors = _down_unlocked()
    note = f" (cleanup also failed: {errors[0]})" if errors else ""
    why = str(err).replace(str(STATE_DIR), str(kept))
    raise LabError(f"lab up failed at '{step}': {why}{note}")


def _keep_logs() -> Path:
    """Copy the state dir (configs, logs) aside so a failed `up` can be diagnosed."""
    shutil.rmtree(FAILED_DIR, ignore_errors=True)
    try:
        shutil.copytree(STATE_DIR, FAILED_DIR, ignore=shutil.ignore_patterns("*.key"))
    except OSError:
        pass
    return FAILED_DIR


def _proxy_password() -> str:
    """The Squid password: generated once and kept, so a re-`up` gives the same LabEnv."""
    f = CACHE_DIR / "proxy-password"
    if not f.is_file():
        tmp = f.with_suffix(f".{os.getpid()}")
        tmp.write_text(secrets.token_hex(8))
        os.chmod(tmp, 0o600)
        tmp.replace(f)
    return f.read_text().strip()


class _StepError(Exception):
    def __init__(self, step: str, err: Exception) -> None:
        super().__init__(step)
        self.step, self.err = step, err


def _build(delay_ms: float, rate_mbit: float | None, media) -> LabEnv:
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    state: dict = {"phase": "starting", "pids": {}}
    _write_state(state)

    def step(name: str, fn, *args):
        try:
            return fn(*args)
        except (CommandError, services.ServiceError, pki.PkiError, OSError) as e:
            raise _StepError(name, e) from None

    original, ours = step("allow cubic congestion control", netns.ensure_cubic_allowed)
    state["allowed_cc"] = {"original": original, "ours": ours}
    state["namespaces"] = list(ALL_ROLES)
    _write_state(state)
    step("create namespaces", netns.create_namespaces)
    step("create veth links", netns.create_links)
    step("create delay routing", netns.create_delay_routing)
    step("write /etc/netns hosts", netns.write_etc_netns)
    if rate_mbit is not None:
        step("shape links with tbf", netns.set_rate, rate_mbit)

    def start(name: str, fn, *args) -> None:
        state["pids"][name] = step(f"start {name}", fn, *args)
        _write_state(state)

    start("delayline", services.start_delayline, STATE_DIR, delay_ms)
    certs = step("make lab CA and certs", _pki)
    password = step("make proxy password", _proxy_password)
    start("nginx", services.start_nginx, STATE_DIR, media.root, certs.origin_cert,
          certs.origin_key)
    start("dns", services.start_dns, STATE_DIR)
    start("squid", services.start_squid, STATE_DIR, PROXY_USER, password)
    start("squid2", services.start_squid, STATE_DIR, PROXY_USER, password, "proxy2")
    start("nghttpx", services.start_nghttpx, STATE_DIR, certs.proxy_cert, certs.proxy_key)
    env = LabEnv(
        delay_ms=delay_ms, rate_mbit=rate_mbit, proxy_user=PROXY_USER, proxy_password=password,
        ca_file=str(certs.ca), squid_access_log=str(STATE_DIR / "squid" / "access.log"),
        sha256_2mb=media.sha256["2mb"], sha256_100mb=media.sha256["100mb"],
        state_dir=str(STATE_DIR),
    )
    state.update(phase="up", env=env.to_dict())
    _write_state(state)
    return env


def _pki() -> pki.LabPki:
    return pki.ensure_pki(CACHE_DIR, (ORIGIN_NAME, host_ip("origin")),
                          (PROXY_NAME, host_ip("proxy")))


def _add_proxy2(env: LabEnv) -> None:
    """Give a running lab built before the second proxy existed its proxy2 and /ip, in place.

    Nothing its users rely on is restarted (nginx reloads gracefully), so a session that
    holds the lab is not disturbed. On failure the half-added proxy2 is removed again.
    """
    state = _read_state()
    _remove_proxy2(state)  # whatever an older `down` that did not know proxy2 left
    try:
        netns.add_host("proxy2", env.rate_mbit)
        netns.write_etc_netns()
        state["pids"]["squid2"] = services.start_squid(
            STATE_DIR, env.proxy_user, env.proxy_password, "proxy2")
        media, certs = ensure_media(), _pki()
        services.reload_nginx(STATE_DIR, media.root, certs.origin_cert, certs.origin_key,
                              state["pids"]["nginx"])
    except (CommandError, services.ServiceError, pki.PkiError, MediaError, OSError) as e:
        _remove_proxy2(state)
        raise LabError(f"adding proxy 2 to the running lab failed: {e}") from None
    state["namespaces"] = list(ALL_ROLES)
    _write_state(state)


def _remove_proxy2(state: dict) -> None:
    state["pids"].pop("squid2", None)
    terminate(netns.namespace_pids("proxy2"))
    netns.remove_host("proxy2")


def set_delay(delay_ms: float) -> LabEnv:
    """Change the router's one-way delay of the running lab (restarts the delay line)."""
    with _locked():
        if current() is None:
            raise LabError("the lab is not up; run `atlantic lab up` first")
        return _restart_delayline(delay_ms)


def _restart_delayline(delay_ms: float) -> LabEnv:
    state = _read_state()
    old = state["pids"].get("delayline")
    if old and _is_ours(old, "delayline"):
        terminate([old])
    try:
        state["pids"]["delayline"] = services.start_delayline(STATE_DIR, delay_ms)
        netns.forget_tcp_metrics()
    except (services.ServiceError, CommandError) as e:
        raise LabError(f"restarting the delay line failed: {e}") from None
    state["env"]["delay_ms"] = delay_ms
    _write_state(state)
    return LabEnv(**state["env"])


def _apply_rate(rate_mbit: float | None) -> LabEnv:
    state = _read_state()
    try:
        netns.set_rate(rate_mbit)
    except CommandError as e:
        raise LabError(f"shaping the links failed: {e}") from None
    state["env"]["rate_mbit"] = rate_mbit
    _write_state(state)
    return LabEnv(**state["env"])


def down() -> None:
    """Remove everything the lab created; safe twice, and after a crash.

    Raises `LabError` only if something could not be removed (listing the first problem).
    """
    with _locked():
        errors = _down_unlocked()
    if errors:
        raise LabError(f"lab down left something behind: {errors[0]}")


def _down_unlocked() -> list[str]:
    state = _read_state()
    errors: list[str] = []
    # services first (recorded PIDs, checked to still be ours), then anything else
    # still living in our namespaces: helpers, shells, tests' own processes
    pids = {n: p for n, p in state.get("pids", {}).items() if _is_ours(p, n)}
    # SIGINT is Squid's immediate shutdown (SIGTERM waits shutdown_lifetime for clients)
    special = {p: signal.SIGINT for n, p in pids.items() if _PROGRAM.get(n) == "squid"}
    terminate(list(pids.values()), signals=special)
    leftovers = [p for ns in netns.lab_namespaces() for p in netns.namespace_pids(ns)]
    if leftovers:
        terminate(leftovers)
    stuck = [p for ns in netns.lab_namespaces() for p in netns.namespace_pids(ns)
             if is_alive(p)]
    if stuck:
        errors.append(f"processes still running in lab namespaces: {stuck[:5]}")
    errors += netns.delete_namespaces()
    netns.remove_etc_netns()
    # Squid removes these itself unless it was killed hard
    for name in services.SQUID_SERVICE_NAMES.values():
        for shm in Path("/dev/shm").glob(f"{name}-*.shm"):
            shm.unlink(missing_ok=True)
    cc = state.get("allowed_cc")
    if cc:
        try:
            netns.restore_allowed_cc(cc["original"], cc["ours"])
        except OSError as e:
            errors.append(f"could not restore tcp_allowed_congestion_control: {e}")
    if not errors:
        shutil.rmtree(STATE_DIR, ignore_errors=True)
    return errors


# ---- failing and restoring one upstream proxy ------------------------------------------

PROXY_ACTIONS = ("stop", "start", "blackhole", "lossy", "heal", "status")
LOSSY_PERCENT = 30  # `lossy`: the share of new connections the router refuses


@dataclass(frozen=True, slots=True)
class ProxyState:
    """One of the lab's upstream proxies, as `proxy_control` left it."""

    n: int
    ip: str
    running: bool
    blackholed: bool

    def describe(self) -> str:
        """One line for the CLI."""
        return (f"proxy {self.n} ({self.ip}:{SQUID_PORT}): "
                f"{'running' if self.running else 'stopped'}, "
                f"{'blackholed or lossy' if self.blackholed else 'reachable'}")


def _proxy_services(n: int) -> tuple[str, ...]:
    # proxy 1's nghttpx (LAB_H2_PROXY_URL) fronts its Squid: both go down and up together
    return ("squid", "nghttpx") if n == 1 else (squid_dir_name(PROXY_ROLES[n]),)


def proxy_control(n: int, action: str) -> ProxyState:
    """Fail or restore upstream proxy *n* (1: proxy.test, 2: proxy2.test) of the running lab.

    ``stop``: its Squid (for proxy 1 also nghttpx) exits, connects are refused; ``start``:
    started again, PIDs recorded; ``blackhole``: the router silently drops every packet to
    or from its address (connects time out); ``lossy``: the router refuses 30% of new
    connections to it instead; ``heal``: undoes either; ``status``: no change.
    Each is safe twice. `up` leaves these as they are; `down` removes everything. Affects
    every user of the lab.
    """
    role = PROXY_ROLES.get(n)
    if role is None:
        raise LabError(f"no proxy {n!r} in the lab; pick 1 or 2")
    if action not in PROXY_ACTIONS:
        raise LabError(f"unknown proxy action {action!r}; pick one of {', '.join(PROXY_ACTIONS)}")
    _check_can_run()
    with _locked():
        env = current()
        if env is None:
            raise LabError("the lab is not up; run `atlantic lab up` first")
        state = _read_state()
        if role not in _roles_built(state):
            raise LabError(f"this lab was built without proxy {n}; run `atlantic lab up` to add it")
        try:
            if action == "stop":
                _stop_proxy(state, n)
            elif action == "start":
                _start_proxy(state, n, env)
            elif action == "blackhole":
                netns.blackhole(role)
            elif action == "lossy":
                netns.refuse_some(role, LOSSY_PERCENT)
            elif action == "heal":
                netns.heal(role)
            running = all(_is_running(state, s) for s in _proxy_services(n))
            return ProxyState(n, host_ip(role), running, netns.is_blackholed(role))
        except (CommandError, services.ServiceError, pki.PkiError, OSError) as e:
            raise LabError(f"proxy {n} {action} failed: {e}") from None


def _is_running(state: dict, name: str) -> bool:
    pid = state["pids"].get(name)
    return pid is not None and _is_ours(pid, name)


def _stop_proxy(state: dict, n: int) -> None:
    for name in reversed(_proxy_services(n)):  # nghttpx before the Squid behind it
        pid = state["pids"].pop(name, None)
        if pid and _is_ours(pid, name):
            if _PROGRAM[name] == "squid":
                services.stop_squid(pid)
            else:
                terminate([pid])
        _write_state(state)


def _start_proxy(state: dict, n: int, env: LabEnv) -> None:
    for name in _proxy_services(n):
        if _is_running(state, name):
            continue
        if name == "nghttpx":
            certs = _pki()
            pid = services.start_nghttpx(STATE_DIR, certs.proxy_cert, certs.proxy_key)
        else:
            pid = services.start_squid(STATE_DIR, env.proxy_user, env.proxy_password,
                                       PROXY_ROLES[n])
        state["pids"][name] = pid
        _write_state(state)
