"""Small probes run inside a lab namespace: TCP connect RTT, bulk throughput, and small
requests one after another (the benchmark suite's latency workload).

Run inside a namespace, print one JSON object::

    ip netns exec atl-client python -m atlantic.lab.measure rtt 10.77.2.2 3128 --count 9
    ip netns exec atl-client python -m atlantic.lab.measure get http://10.77.3.2/100mb --seconds 3
    ip netns exec atl-client python -m atlantic.lab.measure small plain 10.77.3.2:80 origin.test --count 100

Benchmarks print numbers; tests assert on them only with generous bounds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit


def connect_rtts(host: str, port: int, count: int, timeout: float = 5.0) -> list[float]:
    """Seconds taken by *count* sequential TCP handshakes to *host*:*port*."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        s = socket.create_connection((host, port), timeout=timeout)
        out.append(time.perf_counter() - t0)
        s.close()
        time.sleep(0.02)
    return out


def http_get_throughput(url: str, seconds: float, timeout: float = 10.0) -> dict:
    """Fetch *url* repeatedly on one keep-alive connection for about *seconds*; bits/s."""
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
    req = f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}\r\n\r\n".encode()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    fetches = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline and fetches < 10_000:
        sock.sendall(req)
        length, rest = _read_head(sock, b"", 4096)
        got = len(rest)
        while got < length:
            n = sock.recv_into(view, min(len(buf), length - got))
            if not n:
                raise ConnectionError("server closed the connection mid-body")
            got += n
        total += length
        fetches += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"bytes": total, "seconds": elapsed, "fetches": fetches,
            "gbit_s": total * 8 / elapsed / 1e9}


def _read_head(sock: socket.socket, buf: bytes, size: int = 65536) -> tuple[int, bytes]:
    """Read a response head (after ``buf``, bytes already received): its Content-Length and
    the bytes received after it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("server closed the connection before the response head")
        buf += chunk
    header, _, rest = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return length, rest


def _read_response(sock: socket.socket, buf: bytes) -> bytes:
    """Read one whole response; return what was received past it."""
    length, rest = _read_head(sock, buf)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-body")
        rest += chunk
    return rest[length:]


def small_requests(mode: str, server: tuple[str, int], host: str, count: int, auth: str = "") -> dict:
    """``count`` GETs for ``/small`` one after another; seconds per request and in all.

    ``mode``: ``plain`` a new connection to the origin ``server`` per request, ``proxy`` a
    new connection to the proxy ``server`` per request (absolute-form, Basic ``auth`` as
    ``user:password``), ``ideal`` one keep-alive connection to the proxy for all of them.
    """
    extra = f"Proxy-Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n" if mode != "plain" else ""
    target = f"http://{host}/small" if mode != "plain" else "/small"
    close = "" if mode == "ideal" else "Connection: close\r\n"
    req = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}{close}\r\n".encode()

    def connect() -> socket.socket:
        s = socket.create_connection(server, timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    times: list[float] = []
    t_start = time.perf_counter()
    keep = connect() if mode == "ideal" else None
    buf = b""
    for _ in range(count):
        t = time.perf_counter()
        s = keep or connect()
        s.sendall(req)
        buf = _read_response(s, buf if keep else b"")
        times.append(time.perf_counter() - t)
        if not keep:
            s.close()
    if keep:
        keep.close()
    return {"times": times, "wall": time.perf_counter() - t_start}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints one JSON object."""
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.measure")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rtt", help="median TCP connect time")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("--count", type=int, default=9)
    g = sub.add_parser("get", help="HTTP/1.1 keep-alive GET throughput")
    g.add_argument("url")
    g.add_argument("--seconds", type=float, default=3.0)
    m = sub.add_parser("small", help="small requests one after another: seconds each")
    m.add_argument("mode", choices=("plain", "proxy", "ideal"))
    m.add_argument("server", help="address:port of the origin (plain) or the proxy")
    m.add_argument("host", help="the origin's name (Host header)")
    m.add_argument("--count", type=int, default=1000)
    m.add_argument("--auth-env", default="", help="environment variable holding user:password for the proxy")
    a = p.parse_args(argv)
    if a.cmd == "small":
        address, _, port = a.server.rpartition(":")
        out = small_requests(a.mode, (address, int(port)), a.host, a.count, os.environ.get(a.auth_env, ""))
    elif a.cmd == "rtt":
        rtts = connect_rtts(a.host, a.port, a.count)
        out = {"median_ms": statistics.median(rtts) * 1e3, "min_ms": min(rtts) * 1e3,
               "max_ms": max(rtts) * 1e3, "count": len(rtts)}
    else:
        out = http_get_throughput(a.url, a.seconds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
