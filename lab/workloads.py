"""Workloads run in the lab's client namespace, shared by the benchmarks and `atlantic demo`.

Each returns measurements, never asserts: benchmarks print them, tests assert behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from atlantic.lab.topology import LabEnv


def ns(env: LabEnv, argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` in the lab's client namespace (text output), bounded in time."""
    return subprocess.run(["ip", "netns", "exec", env.client_ns, *argv], capture_output=True, text=True,
                          timeout=timeout, **kw)


def atlantic_up(env: LabEnv, url: str, ca: str | None = None, settle_s: float = 0.5) -> None:
    """`atlantic up` in the client namespace with upstream ``url`` (and a CA for https://)."""
    ns(env, [sys.executable, "-m", "atlantic", "down"])
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[upstream]\nurl = "{url}"\n' + (f'ca_file = "{ca}"\n' if ca else ""))
    try:
        res = ns(env, [sys.executable, "-m", "atlantic", "up", "--config", f.name])
        if res.returncode != 0:
            raise RuntimeError(f"atlantic up failed: {res.stderr.strip()}")
    finally:
        os.unlink(f.name)
    time.sleep(settle_s)  # let the pool open its warm connections, as it would on a laptop


def atlantic_down(env: LabEnv) -> dict:
    """`atlantic down` in the client namespace; returns the last status (with counters)."""
    st = json.loads(ns(env, [sys.executable, "-m", "atlantic", "status", "--json"]).stdout or "{}")
    ns(env, [sys.executable, "-m", "atlantic", "down"])
    return st


def curl_times(env: LabEnv, urls: list[str], proxy: str | None, one_process: bool,
               progress: Callable[[], None] | None = None) -> list[float]:
    """curl's own time_total per URL: one process for all URLs, or a new process per URL."""
    # --noproxy would override -x: only a run without a proxy option gets it.
    base = ["curl", "-sS", "--fail", "--cacert", env.ca_file, "-w", "%{time_total}\n"]
    base[1:1] = ["-x", proxy] if proxy else ["--noproxy", "*"]
    out: list[float] = []
    for batch in ([urls] if one_process else [[u] for u in urls]):
        argv = list(base)
        for u in batch:
            argv += ["-o", "/dev/null", u]
        res = ns(env, argv)
        if res.returncode != 0:
            raise RuntimeError(f"curl failed: {res.stderr.strip()}")
        out += [float(x) for x in res.stdout.split()]
        if progress is not None:
            for _ in batch:
                progress()
    return out


def ytdlp_seconds(env: LabEnv, proxy: str | None) -> float:
    """Wall time for yt-dlp to download the lab's HLS stream (a new connection per segment)."""
    with tempfile.TemporaryDirectory(prefix="atlantic-ytdlp-") as d:
        argv = ["yt-dlp", "--quiet", "--no-progress", "--no-cache-dir", "-o", f"{d}/video.%(ext)s",
                f"http://{env.origin_host}/hls/index.m3u8"]
        argv += ["--proxy", proxy] if proxy else []
        t0 = time.perf_counter()
        res = ns(env, argv, timeout=1200)
        took = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"yt-dlp failed: {(res.stderr.strip().splitlines() or ['no output'])[-1]}")
    return took
