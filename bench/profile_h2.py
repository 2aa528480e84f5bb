"""CPU cost of a byte on the pool's HTTP/2 paths, against a real HTTP/2 proxy (nghttpx).

Usage: .venv/bin/python bench/profile_h2.py [--label after] [--size-mib 100] [--repeats 3]

Loopback only. In a temporary directory: a CA and a localhost certificate (openssl),
a backend child process (this script, ``--backend``) that is both the HTTP/1.1 proxy
nghttpx forwards to and the origin (``GET http://.../big?n=N`` answers N bytes;
``CONNECT`` answers 200, then serves the same origin inside the tunnel), and
``nghttpx --http2-proxy --single-process`` (TLS, ALPN h2) in front of it. The pool
under test runs in this process's event loop, so ``getrusage(RUSAGE_SELF)`` is its
own CPU (TLS to the proxy included, as in the daemon).

Paths, as a captured flow uses them:

- ``request``: ``pool.request(GET http://...)`` as an h2 stream; the body read with
  the request relay's read size (``forwarder.http1.READ_SIZE``).
- ``tunnel``: ``pool.open_tunnel()`` (a CONNECT stream), a request written into it,
  the 100 MB answer read with the tunnel relay's read size (``forwarder.stream_relay``).

Each path: ``--repeats`` timed runs (interleaved; median reported), then one run under
cProfile (top 25 by cumulative and by own time). Results go, under ``--label``
(``before``/``after``), into bench/results/profile-h2-20261201.json; the .txt beside
it is rewritten from every label the JSON holds. Every process started is killed by
its PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from loopback import Children, profile_text, start_nghttpx

MIB = 1 << 20
MB = 1_000_000
RESULTS = Path(__file__).resolve().parent / "results"
STEM = "profile-h2-20261201"
PATHS = ("request", "tunnel")


# -- backend child: the HTTP/1.1 proxy behind nghttpx, and the origin ------------------

def _read_head(sock: socket.socket, buf: bytearray) -> bytes | None:
    while (i := buf.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head = bytes(buf[:i + 4])
    del buf[:i + 4]
    return head


def _serve_origin(sock: socket.socket, buf: bytearray, head: bytes) -> None:
    """Answer origin requests on ``sock`` until it closes (``head``: the first one)."""
    block = b"\xa5" * MIB
    while head is not None:
        target = head.split(b" ", 2)[1].decode()
        n = int(target.partition("?n=")[2] or 0)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % n)
        while n:
            k = min(n, MIB)
            sock.sendall(block[:k] if k < MIB else block)
            n -= k
        head = _read_head(sock, buf)


def _backend_conn(sock: socket.socket) -> None:
    buf = bytearray()
    try:
        head = _read_head(sock, buf)
        if head is None:
            return
        if head.startswith(b"CONNECT "):
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            head = _read_head(sock, buf)
        if head is not None:
            _serve_origin(sock, buf, head)
    except OSError:
        pass
    finally:
        sock.close()


def _backend(port_file: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_backend_conn, args=(conn,), daemon=True).start()


# -- the peers ---------------------------------------------------------------------------

class Peers:
    """The backend child and nghttpx, started in ``tmp``; ``close()`` kills both by PID."""

    def __init__(self, tmp: Path) -> None:
        self.children = Children()
        backend_port = self.children.serve(__file__, "--backend", tmp / "backend.port")
        proxy = start_nghttpx(tmp, backend_port, self.children.spawn)
        self.port, self.ca, self.version = proxy.port, proxy.ca, proxy.version

    def close(self) -> None:
        self.children.close()


# -- the paths under test ----------------------------------------------------------------

def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _request(pool, size: int) -> int:
    from atlantic.forwarder.http1 import READ_SIZE
    from atlantic.pool.api import Endpoint, RequestHead

    head = RequestHead("GET", Endpoint("http", "origin.test", 80), f"/big?n={size}",
                       (("Host", "origin.test"),))
    resp = await pool.request(head, None)
    got = 0
    try:
        while chunk := await resp.read(READ_SIZE):
            got += len(chunk)
    finally:
        await resp.aclose()
    return got


async def _tunnel(pool, size: int) -> int:
    from atlantic.forwarder import stream_relay

    CHUNK = getattr(stream_relay, "DOWN_CHUNK", stream_relay.CHUNK)  # what relay_stream reads
    stream = await pool.open_tunnel("origin.test", 80)
    try:
        await stream.write(b"GET /big?n=%d HTTP/1.1\r\nHost: origin.test\r\n\r\n" % size)
        head = b""
        while (i := head.find(b"\r\n\r\n")) < 0:
            head += await stream.read(CHUNK)
        got = len(head) - i - 4
        while got < size:
            chunk = await stream.read(CHUNK)
            if not chunk:
                break
            got += len(chunk)
    finally:
        await stream.aclose(reset=True)
    return got


async def _one(peers: Peers, path: str, size: int, profile: cProfile.Profile | None) -> dict:
    from atlantic.pool.pool import UpstreamPool

    async with UpstreamPool(f"https://localhost:{peers.port}", ca_file=str(peers.ca),
                            addresses={"localhost": "127.0.0.1"}, warm_tunnels=0) as pool:
        fn = _request if path == "request" else _tunnel
        await fn(pool, 4096)  # the connection is up and warm: measure bytes, not the handshake
        if profile is not None:
            profile.enable()
        cpu0, t0 = _cpu(), time.perf_counter()
        got = await fn(pool, size)
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        if profile is not None:
            profile.disable()
    if got != size:
        raise RuntimeError(f"{path}: got {got} of {size} bytes")
    return {"path": path, "elapsed_s": elapsed, "cpu_s": cpu, "mb_per_s": size / MB / elapsed,
            "cpu_s_per_100mb": cpu / (size / MB) * 100}


async def _run(peers: Peers, size: int, repeats: int) -> dict:
    trials = []
    for _ in range(repeats):
        for path in PATHS:  # interleaved: the VM is shared and noisy
            trials.append(await _one(peers, path, size, None))
            print(f"  {path:<8} {trials[-1]['mb_per_s']:7.1f} MB/s  "
                  f"{trials[-1]['cpu_s_per_100mb']:.3f} CPU s/100 MB", flush=True)
    summary, profiles = {}, {}
    for path in PATHS:
        sel = [t for t in trials if t["path"] == path]
        summary[path] = {
            "mb_per_s_median": statistics.median(t["mb_per_s"] for t in sel),
            "mb_per_s_best": max(t["mb_per_s"] for t in sel),
            "cpu_s_per_100mb_median": statistics.median(t["cpu_s_per_100mb"] for t in sel),
            "cpu_s_per_100mb_best": min(t["cpu_s_per_100mb"] for t in sel),
        }
        prof = cProfile.Profile()
        await _one(peers, path, size, prof)
        profiles[path] = {"cumulative": profile_text(prof, "cumulative", 25),
                          "tottime": profile_text(prof, "tottime", 25)}
    return {"summary": summary, "trials": trials, "profiles": profiles}


# -- result files --------------------------------------------------------------------------

def _write_text(doc: dict) -> str:
    lines = [(f"profile_h2: pool HTTP/2 paths against nghttpx --http2-proxy on loopback "
              f"({doc['size_mib']} MiB body = {doc['size_mib'] * MIB / MB:.1f} MB)"),
             ("CPU = getrusage(RUSAGE_SELF) user+sys of the pool's process (TLS included); "
              "median and best of the timed runs"), ""]
    labels = list(doc["runs"])
    lines.append(f"{'label':<8} {'path':<8} {'MB/s med':>9} {'MB/s best':>9} "
                 f"{'CPU s/100MB med':>15} {'best':>6}")
    for label in labels:
        for path, s in doc["runs"][label]["summary"].items():
            lines.append(f"{label:<8} {path:<8} {s['mb_per_s_median']:>9.1f} {s['mb_per_s_best']:>9.1f} "
                         f"{s['cpu_s_per_100mb_median']:>15.3f} {s['cpu_s_per_100mb_best']:>6.3f}")
    for label in labels:
        run = doc["runs"][label]
        lines += ["", (f"== {label}: {run['when']}, {run['host']}, {run['peer']}, "
                       f"python {run['python']}, h2 {run['h2']}, code {run.get('code', '?')}")]
        if run.get("note"):
            lines.append(f"   {run['note']}")
        for path, prof in run["profiles"].items():
            for sort in ("cumulative", "tottime"):
                lines += ["", f"-- {label} / {path}: cProfile top 25 by {sort}", prof[sort].rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="the name of this run in the result files")
    parser.add_argument("--note", default="", help="a line saying what this run measured")
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        _backend(args.backend)
        return
    import h2

    with tempfile.TemporaryDirectory(prefix="profile-h2-") as tmp:
        peers = Peers(Path(tmp))
        try:
            result = asyncio.run(_run(peers, args.size_mib * MIB, args.repeats))
        finally:
            peers.close()
    RESULTS.mkdir(exist_ok=True)
    jpath = RESULTS / f"{STEM}.json"
    doc = json.loads(jpath.read_text()) if jpath.exists() else {}
    doc.update({"bench": "profile_h2", "size_mib": args.size_mib, "repeats": args.repeats})
    doc.setdefault("runs", {})[args.label] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "h2": h2.__version__, "peer": peers.version,
        "code": str(Path(sys.modules["atlantic.pool.h2conn"].__file__).parent.parent),
        "note": args.note, **result}
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    text = _write_text(doc)
    (RESULTS / f"{STEM}.txt").write_text(text)
    print(text.split("\n\n== ")[0])
    print(f"wrote {jpath} and {STEM}.txt")


if __name__ == "__main__":
    main()
