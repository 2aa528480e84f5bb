"""Running commands inside lab namespaces: one-shot, in the background, and waiting for ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atlantic.lab.topology import ns_name

CMD_TIMEOUT_S = 20.0


class CommandError(RuntimeError):
    """A lab setup command failed; the message is one line."""


def ns_exec_argv(ns: str, argv: list[str]) -> list[str]:
    """argv that runs *argv* inside lab namespace *ns* (``client`` or ``atl-client``)."""
    return ["ip", "netns", "exec", ns_name(ns), *argv]


def run(argv: list[str], timeout: float = CMD_TIMEOUT_S, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run *argv* to completion (bounded); on failure raise CommandError with its stderr."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{' '.join(argv)}` timed out after {timeout:g}s") from None
    except FileNotFoundError:
        raise CommandError(f"`{argv[0]}` is not installed") from None
    if check and r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise CommandError(f"`{' '.join(argv)}` failed: {msg}")
    return r


def spawn(ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start *argv* in namespace *ns* in the background, output to *log*; return its PID.

    ``ip netns exec`` execs the command, so the PID is the service's own.
    """
    with log.open("ab") as out:
        p = subprocess.Popen(ns_exec_argv(ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out, start_new_session=True, close_fds=True, env=env)
    return p.pid


def is_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie (reaping it if it is our child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def cmdline(pid: int) -> str:
    """The command line of *pid* ('' if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def terminate(pids: list[int], grace_s: float = 3.0, sig: int = signal.SIGTERM,
              signals: dict[int, int] | None = None) -> list[int]:
    """Send *sig* (or ``signals[pid]``) to *pids* at once, wait up to *grace_s*, SIGKILL the rest.

    Returns the PIDs that had to be killed hard.
    """
    pids = [p for p in pids if is_alive(p)]
    for p in pids:
        _signal(p, (signals or {}).get(p, sig))
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if is_alive(p)]
    for p in pids:
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if is_alive(p)]
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_WAIT_TCP = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
pid = int(sys.argv[4])
def gone():
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError as e:
        if time.monotonic() >= deadline or (pid and gone()):
            print(e, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.05)
"""


def wait_tcp(ns: str, host: str, port: int, timeout: float, pid: int = 0) -> bool:
    """Poll until *host*:*port* accepts TCP inside *ns*; False at the deadline or if *pid* dies."""
    argv = ns_exec_argv(ns, [sys.executable, "-c", _WAIT_TCP, host, str(port), str(timeout),
                             str(pid)])
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout + 10).returncode == 0
    except subprocess.TimeoutExpired:
        return False
