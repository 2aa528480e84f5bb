"""Small probes to check the lab's path: TCP connect RTT and bulk throughput.

Run inside a namespace, print one JSON object::

    ip netns exec atl-client python -m atlantic.lab.measure rtt 10.77.2.2 3128 --count 9
    ip netns exec atl-client python -m atlantic.lab.measure get http://10.77.3.2/100mb --seconds 3

Benchmarks print numbers; tests assert on them only with generous bounds.
"""

from __future__ import annotations

import argparse
import json
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
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
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
    a = p.parse_args(argv)
    if a.cmd == "rtt":
        rtts = connect_rtts(a.host, a.port, a.count)
        out = {"median_ms": statistics.median(rtts) * 1e3, "min_ms": min(rtts) * 1e3,
               "max_ms": max(rtts) * 1e3, "count": len(rtts)}
    else:
        out = http_get_throughput(a.url, a.seconds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
