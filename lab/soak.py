"""Mixed load for a long while (issue 14's "an hour of mixed load"): does the daemon's memory
stay flat, and does it log nothing the load did not ask for?

Inside the client namespace (``load``), three kinds of traffic run together until the
time is up: browsing-like flows (a small HTTP or HTTPS request on a new connection, a few
a second, with pauses), a bulk download of 100 MB every ``bulk_every`` s, and a burst of
``burst`` flows (``lab/burst.py``) every ``burst_every`` s; every body is checked where
its content is known. On the host (``run``), Atlantic is up through the lab's Squid, and
every ``sample_s`` seconds the daemon's RSS is read from /proc; at the end, the daemon's
log lines at WARNING or above are counted. ``python -m atlantic.lab.soak run --minutes 60
--out FILE`` writes the result file and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from atlantic.lab.burst import run_burst
from atlantic.lab.topology import LabEnv
from atlantic.lab.workloads import atlantic, lab_config, status, up_with

ORIGIN = "origin.test"


async def _get(host: str, port: int, path: str, tls: ssl.SSLContext | None, timeout: float) -> int:
    """GET on a new connection; the body's length, or raises."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            first, total = b"", 0
            while chunk := await reader.read(1 << 20):
                first, total = first or chunk, total + len(chunk)  # only the status line is kept
            status = first.split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"200"]:
                raise ValueError(status[:80].decode("latin-1") or "empty answer")
            return total
        finally:
            writer.close()


async def load(seconds: float, ca: str, bulk_every: float, burst: int, burst_every: float) -> dict:
    """All three kinds of traffic until ``seconds`` have passed; counts of each outcome."""
    tls = ssl.create_default_context(cafile=ca)
    counts: Counter = Counter()
    end = time.monotonic() + seconds
    rng = random.Random(2026)

    async def browse():
        while time.monotonic() < end:
            https = rng.random() < 0.6
            try:
                await _get(ORIGIN, 443 if https else 80, "/small", tls if https else None, 30)
                counts["browse_ok"] += 1
            except Exception as exc:  # noqa: BLE001 - counted by kind
                counts[f"browse_failed:{type(exc).__name__}"] += 1
            await asyncio.sleep(rng.uniform(0.05, 0.6))

    async def bulk():
        while time.monotonic() < end:
            try:
                await _get(ORIGIN, 80, "/100mb", None, 120)
                counts["bulk_ok"] += 1
            except Exception as exc:  # noqa: BLE001
                counts[f"bulk_failed:{type(exc).__name__}"] += 1
            await asyncio.sleep(min(bulk_every, max(0.0, end - time.monotonic())))

    async def bursts():
        while time.monotonic() + burst_every < end:
            await asyncio.sleep(burst_every)
            report = await run_burst(burst, burst // 2, 65536, ORIGIN, f"www.{ORIGIN}", ca, deadline=120)
            counts["burst_flows_ok"] += report.get("ok", 0)
            counts["burst_flows_failed"] += report.get("failed", 0)

    await asyncio.gather(*(browse() for _ in range(4)), bulk(), bursts())
    return dict(counts)


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _memory(pid: int, sites: bool) -> dict:
    """The daemon's ``memory`` report over its control socket (root only); {} if it did not answer.
    The lab config keeps the default state_dir, one per network namespace (client/state.py)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(f"/run/atlantic/net{os.stat(f'/proc/{pid}/ns/net').st_ino}.sock")
            s.sendall(json.dumps({"cmd": "memory", "sites": sites}).encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return {}


def run(lab: LabEnv, minutes: float, *, sample_s: float = 30.0, bulk_every: float = 120.0,
        burst: int = 200, burst_every: float = 300.0, trace_frames: int = 0, baseline_min: float = 10.0) -> dict:
    """Atlantic up through Squid, the load for ``minutes``, RSS sampled; always down after.

    ``trace_frames`` > 0 starts the daemon with tracemalloc (ATLANTIC_TRACEMALLOC): each sample
    then has the traced Python heap beside RSS, and the result lists the allocation sites
    that grew from ``baseline_min`` minutes in (after the first burst) to the end."""
    with tempfile.TemporaryDirectory(prefix="atl-soak-") as tmp:
        env = dict(os.environ, ATLANTIC_TRACEMALLOC=str(trace_frames)) if trace_frames else None
        up_with(lab, lab_config(lab, Path(tmp), [lab.proxy_ip]), env=env)
        pid = status(lab)["pid"]
        log_file = Path(os.readlink(f"/proc/{pid}/fd/2"))  # a daemon `up` started logs through its stderr
        log_at = log_file.stat().st_size
        seconds = minutes * 60
        loader = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "atlantic.lab.soak", "load",
             "--seconds", str(seconds), "--ca", lab.ca_file, "--bulk-every", str(bulk_every),
             "--burst", str(burst), "--burst-every", str(burst_every)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss, traced, growth, t0 = [], [], {}, time.monotonic()
        try:
            while loader.poll() is None and time.monotonic() - t0 < seconds + 600:
                at = round(time.monotonic() - t0)
                rss.append((at, _rss_kib(pid)))
                if trace_frames:
                    traced.append((at, _memory(pid, sites=False).get("traced_kib")))
                    if not growth and at >= baseline_min * 60:
                        growth = {"baseline_s": at, "largest": _memory(pid, sites=True).get("largest", [])}
                time.sleep(sample_s)
            out, err = loader.communicate(timeout=600)
            final = status(lab)
            if trace_frames and growth:
                end = _memory(pid, sites=True)
                growth.update(end_s=round(time.monotonic() - t0), growth=end.get("growth", []))
        finally:
            if loader.poll() is None:
                loader.kill()
                loader.wait(10)
            with log_file.open("rb") as f:
                f.seek(log_at)
                text = f.read().decode(errors="replace")
            atlantic(lab, "down")
    noisy = [ln for ln in text.splitlines() if f"atlantic[{pid}]" in ln and (" WARNING " in ln or " ERROR " in ln)]
    counts = json.loads(out) if out.strip() else {"load_error": err.strip()[-300:]}
    extra = {"traced_kib": traced, "traced_growth": growth} if trace_frames else {}
    return {"minutes": minutes, "counts": counts, "rss_kib": rss, **extra,
            "flows_total": final.get("flows_total"), "flows_failed": final.get("flows_failed"),
            "log_lines_warning_or_error": len(noisy), "log_examples": noisy[:10]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.soak", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ld = sub.add_parser("load", help="(inside the client namespace) the mixed load; prints counts as JSON")
    ld.add_argument("--seconds", type=float, required=True)
    ld.add_argument("--ca", required=True)
    ld.add_argument("--bulk-every", type=float, default=120)
    ld.add_argument("--burst", type=int, default=200)
    ld.add_argument("--burst-every", type=float, default=300)
    r = sub.add_parser("run", help="(host, lab up) Atlantic up, the load, RSS sampled; write --out")
    r.add_argument("--minutes", type=float, default=60)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--trace-frames", type=int, default=0,
                   help="run the daemon under tracemalloc with this many frames (slower; finds what grows)")
    r.add_argument("--baseline-min", type=float, default=10.0,
                   help="with --trace-frames: compare allocation sites from this minute on")
    args = p.parse_args(argv)
    if args.cmd == "load":
        print(json.dumps(asyncio.run(load(args.seconds, args.ca, args.bulk_every, args.burst, args.burst_every))))
        return 0
    from atlantic.lab.lab import current

    lab = current()
    if lab is None:
        print("error: the lab is not up; run `atlantic lab up` first", file=sys.stderr)
        return 1
    result = run(lab, args.minutes, trace_frames=args.trace_frames,
                 baseline_min=args.baseline_min)
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    kib = [v for _, v in result["rss_kib"] if v]
    print(f"{args.minutes:g} min: {result['counts']}; RSS {kib[0] if kib else '?'} -> {kib[-1] if kib else '?'} KiB "
          f"(max {max(kib) if kib else '?'}); {result['log_lines_warning_or_error']} warning/error log lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
