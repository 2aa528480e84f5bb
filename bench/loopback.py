"""Helpers the loopback profiles share (bench/profile_conn.py, bench/profile_h2.py): a free
port, waiting for a peer process to listen, and a cProfile table as text."""

from __future__ import annotations

import cProfile
import io
import pstats
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Until 127.0.0.1:``port`` accepts; RuntimeError if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def profile_text(prof: cProfile.Profile, sort: str, top: int) -> str:
    """The ``top`` functions of ``prof`` by ``sort``, from the "function calls" line on."""
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats(sort).print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "function calls" in line), 0)
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip()) + "\n"
