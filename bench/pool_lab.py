"""Pool probes for the lab: run inside the client namespace, print one JSON object.

    ip netns exec atl-client .venv/bin/python bench/pool_lab.py seq --proxy "$LAB_PROXY_URL" \\
        --url http://origin.test/2mb --n 30
    ... h2mix --proxy "$LAB_H2_PROXY_URL" --ca "$LAB_CA_FILE"
    ... early --proxy "$LAB_PROXY_URL" --rounds 5     # CONNECT + first bytes: wait for 200 or not
    ... early407 --proxy "$LAB_PROXY_URL"             # what Squid does with early bytes after a 407

Every wait is bounded; nothing here is asserted (the tests do that).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import statistics
import time
from urllib.parse import urlsplit

from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.pool import UpstreamPool


def _head(url: str) -> RequestHead:
    u = urlsplit(url)
    ep = Endpoint("http", u.hostname, u.port or 80)
    return RequestHead("GET", ep, u.path or "/", (("Host", ep.authority), ("User-Agent", "atlantic-pool-probe")))


async def _fetch(pool: UpstreamPool, url: str) -> tuple[int, str, int]:
    resp = await pool.request(_head(url), None)
    h = hashlib.sha256()
    n = 0
    while piece := await resp.read():
        h.update(piece)
        n += len(piece)
    await resp.aclose()
    return resp.head.status, h.hexdigest(), n


async def seq(args) -> dict:
    """N sequential GETs through the pool."""
    async with UpstreamPool(args.proxy, ca_file=args.ca, mark=args.mark) as pool:
        t0 = time.perf_counter()
        results = [await _fetch(pool, args.url) for _ in range(args.n)]
        elapsed = time.perf_counter() - t0
        return {"statuses": sorted({r[0] for r in results}), "sha256": sorted({r[1] for r in results}),
                "bytes": sum(r[2] for r in results), "seconds": round(elapsed, 3),
                "ms_per_request": round(1000 * elapsed / args.n, 1),
                "counters": pool.counters(), "repr": repr(pool)}


async def _tunnel_get(pool: UpstreamPool, host: str, path: str) -> bytes:
    t = await pool.open_tunnel(host, 80)
    await t.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = bytearray()
    while piece := await t.read():
        data += piece
    await t.aclose()
    return bytes(data)


async def h2mix(args) -> dict:
    """GETs and CONNECT tunnels at once over the https (h2) proxy."""
    async with UpstreamPool(args.proxy, ca_file=args.ca, mark=args.mark) as pool:
        gets = [_fetch(pool, "http://origin.test/2mb") for _ in range(args.n)]
        tunnels = [_tunnel_get(pool, "origin.test", "/2mb") for _ in range(args.tunnels)]
        results = await asyncio.gather(*gets, *tunnels)
        tunnel_sha = sorted({hashlib.sha256(r.partition(b"\r\n\r\n")[2]).hexdigest()
                             for r in results[args.n:]})
        return {"statuses": sorted({r[0] for r in results[:args.n]}),
                "sha256": sorted({r[1] for r in results[:args.n]}), "tunnel_sha256": tunnel_sha,
                "tunnel_status_lines": sorted({r.split(b"\r\n", 1)[0].decode() for r in results[args.n:]}),
                "counters": pool.counters(), "repr": repr(pool)}


async def early(args) -> dict:
    """Time CONNECT + `GET /small` to first response byte, waiting for the 200 or not (interleaved)."""
    out: dict[str, list[float]] = {"wait_200": [], "early": []}
    for _ in range(args.rounds):
        for mode in ("wait_200", "early"):
            async with UpstreamPool(args.proxy, warm_tunnels=0, mark=args.mark,
                                    early_connect_data=(mode == "early")) as pool:
                t0 = time.perf_counter()
                t = await pool.open_tunnel("origin.test", 80)
                await t.write(b"GET /small HTTP/1.1\r\nHost: origin.test\r\n\r\n")
                first = await t.read()
                out[mode].append((time.perf_counter() - t0) * 1000)
                assert first.startswith(b"HTTP/1.1 200"), first[:40]
                await t.aclose()
    return {m: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1)}
            for m, v in out.items()}


def early407(args) -> dict:
    """Raw socket: CONNECT with wrong credentials and a GET right behind it; what comes back."""
    u = urlsplit(args.proxy)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, args.mark)
    s.settimeout(5)
    s.connect((u.hostname, u.port))
    s.sendall(b"CONNECT origin.test:80 HTTP/1.1\r\nHost: origin.test:80\r\n"
              b"Proxy-Authorization: Basic YmFkOmJhZA==\r\n\r\n"
              b"GET http://origin.test/small HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 3
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            piece = s.recv(65536)
        except TimeoutError:
            continue
        if not piece:
            break
        data += piece
    s.close()
    import re
    lines = [m.decode("latin-1") for m in re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", data)]
    # more than one status line: the proxy took the early bytes for a request of their own
    return {"status_lines": lines, "bytes": len(data), "closed_by_proxy": time.monotonic() < deadline}


def main() -> None:
    """Parse the probe name and arguments; print the result as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("probe", choices=["seq", "h2mix", "early", "early407"])
    p.add_argument("--proxy", required=True)
    p.add_argument("--ca")
    p.add_argument("--url", default="http://origin.test/2mb")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--tunnels", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    # Atlantic's default fwmark: like the daemon's own sockets, the probe's bypass any
    # capture another test may have running in the client namespace
    p.add_argument("--mark", type=lambda v: int(v, 0), default=0x2026)
    args = p.parse_args()
    if args.probe == "early407":
        result = early407(args)
    else:
        result = asyncio.run(asyncio.wait_for(globals()[args.probe](args), 120))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
