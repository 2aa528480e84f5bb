"""Chunked downloads and small requests: why Atlantic exists, measured side by side.

In the lab at one or more one-way delays (default 20 ms = RTT 40 ms, and 50 ms = RTT
100 ms), in one run:

  30 x 2 MB, a new curl process (so a new connection) per chunk, HTTP and HTTPS:
    new conn (curl -x)   curl pointed at Squid, no Atlantic: a new proxy connection per chunk
    ideal (1 conn)       one curl process fetching all 30 through Squid on one warm connection
    no proxy, new conn   for scale: curl straight to the origin, no proxy, no Atlantic
    atlantic h1          plain curl, Atlantic up with Squid (HTTP/1.1 pool, warm CONNECTs)
    atlantic h2          plain curl, Atlantic up with nghttpx (HTTP/2 streams to the proxy)
  1,000 small requests (/small, ~100 B), p50/p95/p99:
    new conn via proxy   a new proxy connection per request (python, absolute-form)
    ideal (1 conn)       one python client keeping one keep-alive connection to Squid
    atlantic h1          a new connection per request to the origin, captured by Atlantic

Per-chunk times are curl's own `time_total` (process start-up excluded). Gain share =
(T_new - T_atlantic) / (T_new - T_ideal). Prints markdown tables and writes
bench/results/chunks-<date>.json.

    .venv/bin/python bench/chunks.py [--delays 20,50] [--chunks 30] [--small 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from atlantic import lab as labmod
from atlantic.lab.workloads import atlantic_down, atlantic_up, curl_times, ns

RESULTS = Path(__file__).resolve().parent / "results"

SMALL = r"""
import socket, sys, time, json, base64
mode, proxy_ip, proxy_port, user, pw, origin_ip, host, n = sys.argv[1:9]
n = int(n)
auth = base64.b64encode(f"{user}:{pw}".encode()).decode()
def read_response(s, buf):
    while b"\r\n\r\n" not in buf:
        c = s.recv(65536)
        if not c: raise EOFError
        buf += c
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < length:
        rest += s.recv(65536)
    return rest[length:]
times = []
if mode == "ideal":
    s = socket.create_connection((proxy_ip, int(proxy_port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(f"GET http://{host}/small HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
        buf = read_response(s, buf)
        times.append(time.perf_counter() - t)
else:
    for _ in range(n):
        t = time.perf_counter()
        if mode == "proxy":
            s = socket.create_connection((proxy_ip, int(proxy_port)))
            req = f"GET http://{host}/small HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        else:
            s = socket.create_connection((origin_ip, 80))
            req = f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req.encode())
        read_response(s, b"")
        times.append(time.perf_counter() - t)
        s.close()
print(json.dumps(times))
"""


def small_times(env, mode: str, n: int) -> list[float]:
    res = ns(env, [sys.executable, "-c", SMALL, mode, env.proxy_ip, str(env.squid_port), env.proxy_user,
                   env.proxy_password, env.origin_ip, env.origin_host, str(n)])
    if res.returncode != 0:
        raise RuntimeError(f"small requests ({mode}) failed: {res.stderr.strip()[-300:]}")
    return json.loads(res.stdout)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def run_delay(env, chunks: int, small: int) -> dict:
    out: dict = {"chunks": {}, "small": {}, "pool": {}}
    for scheme in ("http", "https"):
        urls = [f"{scheme}://{env.origin_host}/2mb"] * chunks
        res = out["chunks"][scheme] = {}
        res["new conn (curl -x)"] = curl_times(env, urls, env.proxy_url, one_process=False)
        res["ideal (1 conn)"] = curl_times(env, urls, env.proxy_url, one_process=True)
        res["no proxy, new conn"] = curl_times(env, urls, None, one_process=False)
        for name, url, ca in (("atlantic h1", env.proxy_url, None), ("atlantic h2", env.h2_proxy_url, env.ca_file)):
            atlantic_up(env, url, ca)
            try:
                res[name] = curl_times(env, urls, None, one_process=False)
            finally:
                out["pool"][f"{scheme} {name}"] = atlantic_down(env).get("pool", {})
    out["small"]["new conn via proxy"] = small_times(env, "proxy", small)
    out["small"]["ideal (1 conn)"] = small_times(env, "ideal", small)
    atlantic_up(env, env.proxy_url)
    try:
        out["small"]["atlantic h1"] = small_times(env, "atlantic", small)
    finally:
        out["pool"]["small atlantic h1"] = atlantic_down(env).get("pool", {})
    return out


def tables(delay: float, r: dict) -> str:
    lines = [f"\n### RTT {2 * delay:g} ms\n"]
    for scheme, res in r["chunks"].items():
        t_new = statistics.median(res["new conn (curl -x)"])
        t_ideal = statistics.median(res["ideal (1 conn)"])
        lines += [f"{scheme.upper()}: {len(res['ideal (1 conn)'])} x 2 MB, new connection per chunk\n",
                  "| variant | median ms/chunk | min | vs new conn | gain share |", "|---|---|---|---|---|"]
        for name, times in res.items():
            med = statistics.median(times)
            share = (t_new - med) / (t_new - t_ideal) if t_new != t_ideal else float("nan")
            lines.append(f"| {name} | {med * 1000:.0f} | {min(times) * 1000:.0f} | {t_new / med:.2f}x | "
                         f"{f'{share:.0%}' if name.startswith('atlantic') else '-'} |")
        lines.append("")
    lines += [f"{len(r['small']['ideal (1 conn)'])} small requests\n", "| variant | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    for name, times in r["small"].items():
        lines.append(f"| {name} | {pct(times, 50) * 1000:.2f} | {pct(times, 95) * 1000:.2f} | {pct(times, 99) * 1000:.2f} |")
    reuse = []
    for name, pool in r["pool"].items():
        if pool.get("requests"):
            reuse.append(f"{name}: {pool['reused']}/{pool['requests']} requests reused")
        if pool.get("tunnels_warm") or pool.get("tunnels_cold"):
            reuse.append(f"{name}: tunnels {pool['tunnels_warm']} warm, {pool['tunnels_cold']} cold; "
                         f"h2 streams {pool.get('h2_streams', 0)}, connections opened {pool['connections_opened']}")
    lines += ["", "Pool counters: " + "; ".join(reuse)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delays", default="20,50", help="one-way delays in ms, comma-separated")
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--small", type=int, default=1000)
    args = ap.parse_args()
    was_up = labmod.current() is not None
    results = {}
    text = []
    try:
        for delay in [float(d) for d in args.delays.split(",")]:
            env = labmod.up(delay_ms=delay)
            results[delay] = run_delay(env, args.chunks, args.small)
            text.append(tables(delay, results[delay]))
            print(text[-1], flush=True)
    finally:
        if was_up and labmod.current() is not None:
            labmod.set_delay(20)
        elif not was_up:
            labmod.down()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"chunks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"benchmark": "chunks", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "machine": platform.uname()._asdict(), "cpus": os.cpu_count(),
                               "results": results, "tables": "\n".join(text)}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
