"""`atlantic demo`: what Atlantic does for an application that reconnects for every chunk.

Brings the lab up (unless it is), then runs, with a progress display:
  - 30 downloads of 2 MB, each by a new curl process, over HTTP and HTTPS: through Squid
    the usual way (`curl -x`, a new proxy connection per chunk) and with Atlantic up
    (plain curl, no proxy setting: Atlantic's warm, shared connections);
  - Debian's yt-dlp (/usr/bin/yt-dlp: it opens a new connection per segment) downloading
    the lab's HLS stream: with `--proxy`, and with Atlantic up;
prints the comparison and takes the lab down again if it started it.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Row:
    """One workload measured without and with Atlantic (seconds per unit of work)."""

    workload: str
    unit: str
    without: float
    with_atlantic: float


def _format(seconds: float, unit: str) -> str:
    return f"{seconds * 1000:.0f} {unit}" if unit.startswith("ms") else f"{seconds:.1f} {unit}"


def run_demo(chunks: int = 30, delay_ms: float = 20, keep_lab: bool = False, ytdlp: bool = True) -> list[Row]:
    """Run the demo and print the comparison; returns the rows."""
    from atlantic import lab as labmod
    from atlantic.lab import workloads as w

    console = Console()
    started = labmod.current() is None
    with console.status("bringing the lab up (namespaces, delay line, Squid, nghttpx, nginx)"):
        env = labmod.up(delay_ms=delay_ms)
    console.print(f"lab up: RTT {2 * delay_ms:g} ms between client, proxy and origin; "
                  f"Squid at {env.proxy_ip}:{env.squid_port}")
    rows: list[Row] = []
    use_ytdlp = ytdlp and os.access(w.DEBIAN_YTDLP, os.X_OK)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            for scheme in ("http", "https"):
                urls = [f"{scheme}://{env.origin_host}/2mb"] * chunks
                label = f"{scheme.upper()} {chunks} x 2 MB"
                task = progress.add_task(f"{label}, curl -x Squid", total=chunks)
                plain = w.curl_times(env, urls, env.proxy_url, one_process=False,
                                     progress=lambda t=task: progress.advance(t))
                task = progress.add_task(f"{label}, Atlantic", total=chunks)
                w.atlantic_up(env, env.proxy_url)
                try:
                    pooled = w.curl_times(env, urls, None, one_process=False, progress=lambda t=task: progress.advance(t))
                finally:
                    w.atlantic_down(env)
                rows.append(Row(f"{label}, a new connection per chunk", "ms per chunk",
                                statistics.median(plain), statistics.median(pooled)))
            if use_ytdlp:
                task = progress.add_task("yt-dlp HLS, --proxy Squid", total=1)
                plain_s = w.ytdlp_seconds(env, env.proxy_url, exe=w.DEBIAN_YTDLP)
                progress.advance(task)
                task = progress.add_task("yt-dlp HLS, Atlantic", total=1)
                w.atlantic_up(env, env.proxy_url)
                try:
                    pooled_s = w.ytdlp_seconds(env, None, exe=w.DEBIAN_YTDLP)
                finally:
                    w.atlantic_down(env)
                progress.advance(task)
                rows.append(Row("yt-dlp, HLS stream (~20 segments of 2 MB)", "s total", plain_s, pooled_s))
    finally:
        if started and not keep_lab:
            with console.status("taking the lab down"):
                labmod.down()
    table = Table(title=f"Through a proxy at RTT {2 * delay_ms:g} ms: without and with Atlantic")
    for col in ("workload", "without Atlantic", "with Atlantic", "faster"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for r in rows:
        table.add_row(r.workload, _format(r.without, r.unit), _format(r.with_atlantic, r.unit),
                      f"{r.without / r.with_atlantic:.2f}x")
    console.print(table)
    if not use_ytdlp and ytdlp:
        console.print(f"{w.DEBIAN_YTDLP} is not installed (packaging/setup.sh installs it): its workload was skipped")
    console.print("HTTPS can only win the proxy leg (each TLS session is end to end); plain HTTP rides "
                  "one warm connection. Details: README, 'Measured'.")
    return rows
