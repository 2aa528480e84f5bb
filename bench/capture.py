"""Capture benchmark: bulk download and short connections, direct vs through Atlantic.

In the lab (delay 0 unless --delay-ms), side by side in one run, interleaved:
  direct              curl straight to the origin (no Atlantic, no proxy)
  squid (curl -x)     curl pointed at Squid itself, no Atlantic
  atlantic direct     curl with no proxy setting, Atlantic up with upstream `direct`
  atlantic -> squid   curl with no proxy setting, Atlantic up with upstream Squid
Workloads: one 100 MB download (MB/s), 1,000 short sequential connections (conn/s).
CPU seconds: the client process, and Atlantic's daemon during the workload.
Prints a markdown table and writes bench/results/capture-<date>.json.

    sudo .venv/bin/python bench/capture.py [--repeat 3] [--delay-ms 0] [--conns 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from atlantic import lab as labmod
from atlantic.lab.workloads import atlantic_down, atlantic_up, ns

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SHORT_CONNS = r"""
import socket, sys, time
ip, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
req = f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
t0 = time.perf_counter()
for _ in range(n):
    s = socket.create_connection((ip, 80), timeout=10)
    s.sendall(req)
    while s.recv(65536):
        pass
    s.close()
print(n / (time.perf_counter() - t0))
"""


def ns_argv(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_checked(argv: list[str], timeout: float = 600) -> str:
    """Run argv to completion (bounded); return its stdout or raise with its stderr."""
    try:
        res = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s: {' '.join(argv)}") from None
    if res.returncode != 0:
        raise RuntimeError(f"failed ({res.returncode}): {' '.join(argv)}: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout.decode()


def child_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Variant:
    """One way of reaching the origin: how to set it up and how curl is pointed."""

    def __init__(self, name: str, upstream: str | None, curl_proxy: str | None):
        self.name = name
        self.upstream = upstream  # None: Atlantic stays down
        self.curl_proxy = curl_proxy


def daemon_pid(env) -> int | None:
    st = json.loads(ns(env, [sys.executable, "-m", "atlantic", "status", "--json"]).stdout or "{}")
    return st.get("pid") if st.get("state") == "up" else None


def bulk(env, v: Variant) -> dict:
    # --noproxy would override -x: only a run without a proxy option gets it.
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
            f"http://{env.origin_host}/100mb"]
    argv[1:1] = ["-x", v.curl_proxy] if v.curl_proxy else ["--noproxy", "*"]
    return measure(env, argv, lambda out: (lambda size, t: {"MB/s": float(size) / float(t) / 1e6})(*out.split()))


def short(env, v: Variant, n: int) -> dict:
    if v.curl_proxy:  # through Squid by hand: each connection is a CONNECT via curl -x
        return {}
    argv = [sys.executable, "-c", SHORT_CONNS, env.origin_ip, env.origin_host, str(n)]
    return measure(env, argv, lambda out: {"conn/s": float(out)})


def measure(env, argv: list[str], parse) -> dict:
    pid = daemon_pid(env)
    d0 = proc_cpu(pid) if pid else 0.0
    c0 = child_cpu()
    out = run_checked(ns_argv(env.client_ns, argv))
    result = parse(out.strip())
    result["client_cpu_s"] = child_cpu() - c0
    result["daemon_cpu_s"] = (proc_cpu(pid) - d0) if pid else 0.0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    args = ap.parse_args()

    was_up = labmod.current() is not None
    env = labmod.up(delay_ms=args.delay_ms)
    variants = [
        Variant("direct", None, None),
        Variant("squid (curl -x)", None, env.proxy_url),
        Variant("atlantic direct", "direct", None),
        Variant("atlantic -> squid", env.proxy_url, None),
    ]
    runs: dict[str, list[dict]] = {v.name: [] for v in variants}
    try:
        for rep in range(args.repeat):
            for v in variants:  # interleaved: the machine's noise hits every variant alike
                atlantic_down(env)
                if v.upstream is not None:
                    atlantic_up(env, v.upstream)
                try:
                    row = {"bulk": bulk(env, v), "short": short(env, v, args.conns)}
                finally:
                    atlantic_down(env)
                runs[v.name].append(row)
                print(f"  rep {rep + 1} {v.name}: {row}", file=sys.stderr)
    finally:
        if not (was_up or args.keep_lab):
            labmod.down()
        elif labmod.current() is not None:
            labmod.set_delay(20)

    table = summarize(runs)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"capture-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "benchmark": "capture", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.uname()._asdict(),
        "cpus": os.cpu_count(), "delay_ms": args.delay_ms, "conns": args.conns, "repeat": args.repeat,
        "runs": runs, "table": table,
    }, indent=2))
    print(f"\nwrote {out}")


def summarize(runs: dict[str, list[dict]]) -> str:
    """The markdown table: median (min..max) per variant, and ratios to direct."""
    def med(name: str, work: str, key: str) -> float | None:
        vals = [r[work][key] for r in runs[name] if key in r[work]]
        return statistics.median(vals) if vals else None

    def span(name: str, work: str, key: str) -> str:
        vals = [r[work][key] for r in runs[name] if key in r[work]]
        if not vals:
            return "-"
        return f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})"

    base_bulk = med("direct", "bulk", "MB/s")
    base_conn = med("direct", "short", "conn/s")
    lines = [
        "| variant | 100 MB bulk MB/s (min-max) | vs direct | Gbit/s | daemon CPU s | client CPU s "
        "| short conn/s (min-max) | vs direct | daemon CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in runs:
        b = med(name, "bulk", "MB/s")
        c = med(name, "short", "conn/s")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, span(name, "bulk", "MB/s"),
            f"{b / base_bulk:.2f}" if b and base_bulk else "-",
            f"{b * 8 / 1000:.2f}" if b else "-",
            f"{med(name, 'bulk', 'daemon_cpu_s'):.2f}",
            f"{med(name, 'bulk', 'client_cpu_s'):.2f}",
            span(name, "short", "conn/s"),
            f"{c / base_conn:.2f}" if c and base_conn else "-",
            f"{med(name, 'short', 'daemon_cpu_s'):.2f}" if c else "-",
        ))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
