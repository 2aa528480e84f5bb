"""Helpers the loopback profiles share (bench/profile_conn.py, bench/profile_h2.py): a free
port, the child processes a profile starts (ended by PID), waiting for a peer process to
listen, a cProfile table as text, and an HTTP/2 proxy (nghttpx ``--http2-proxy``, TLS with
ALPN h2, a private CA) in front of a loopback backend."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """The processes a profile starts: ``spawn`` keeps each; ``close`` ends them newest first,
    by PID: ``stop_signal``, then SIGKILL after 5 s (Squid wants SIGINT: on SIGTERM it waits
    for its clients)."""

    def __init__(self, stop_signal: int = signal.SIGTERM) -> None:
        self.stop_signal = stop_signal
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` with no terminal I/O and keep it."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def serve(self, script: str, flag: str, port_file: Path, timeout: float = 10.0) -> int:
        """Run ``python script flag port_file`` (a server child that writes its port to the
        file) and return that port; RuntimeError if it exits or is silent for ``timeout`` s."""
        child = self.spawn([sys.executable, script, flag, str(port_file)])
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError(f"{Path(script).name} {flag} did not start")
            time.sleep(0.02)
        return int(port_file.read_text())

    def close(self) -> None:
        """End every process still running."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, self.stop_signal)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)


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


@dataclass(frozen=True, slots=True)
class H2Proxy:
    """A running nghttpx: its port, the CA that signed its certificate for ``localhost``
    (pass ``ca_file=ca``, ``addresses={"localhost": "127.0.0.1"}`` to the pool), its version."""

    port: int
    ca: Path
    version: str


def start_nghttpx(tmp: Path, backend_port: int, spawn: Callable[[list[str]], subprocess.Popen]) -> H2Proxy:
    """``nghttpx --http2-proxy --single-process`` on a free loopback port (TLS, ALPN h2, a CA
    and certificate made in ``tmp``) forwarding to the HTTP/1.1 proxy at 127.0.0.1:``backend_port``.

    ``spawn(argv)`` starts the process (the caller keeps it, to kill it by PID); returns once
    nghttpx accepts. Windows of 16 MiB both ways, 256 backend connections.
    """
    from atlantic.lab.pki import make_ca, make_server_cert

    ca = make_ca(tmp)
    crt, key = make_server_cert(tmp, "proxy", "localhost", "127.0.0.1")
    port = free_port()
    proc = spawn([
        "nghttpx", "--conf=/dev/null", "--http2-proxy", "--single-process", "--no-ocsp",
        f"--frontend=127.0.0.1,{port}", f"--backend=127.0.0.1,{backend_port}",
        f"--errorlog-file={tmp / 'nghttpx.log'}", "--no-via",
        "--frontend-http2-window-size=16M", "--frontend-http2-connection-window-size=16M",
        "--backend-connections-per-host=256", str(key), str(crt)])
    wait_tcp(port, proc)
    version = subprocess.run(["nghttpx", "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
    return H2Proxy(port, ca, version)
