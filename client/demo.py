"""`atlantic demo`: what Atlantic does for an application that reconnects for every chunk.

Brings the lab up (unless it is), then runs, with a progress display:
  - 30 downloads of 2 MB, each by a new curl process, over HTTP and HTTPS: through Squid
    the usual way (`curl -x`, a new proxy connection per chunk) and with Atlantic up
    (plain curl, no proxy setting: Atlantic's warm, shared connections);
  - Debian's yt-dlp (/usr/bin/yt-dlp: it opens a new connection per segment) downloading
    the lab's HLS stream: with `--proxy`, and with Atlantic up;
prints the comparison and takes the lab down again if it started it.

Every figure in the table comes from a JSON file the demo writes first (default
``/run/atlantic/demo.json``, beside the daemon's state; ``--json-out FILE`` to choose):
the medians shown, every sample behind them, the RTT and the date. The table is then
rendered from that file, so what is printed and what is kept are the same numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Row:
    """One workload measured without and with Atlantic (seconds per unit of work; the samples
    behind each figure: every chunk's seconds, or the one run's)."""

    workload: str
    unit: str
    without: float
    with_atlantic: float
    without_samples: tuple[float, ...] = field(default=())
    with_samples: tuple[float, ...] = field(default=())


def _format(seconds: float, unit: str) -> str:
    return f"{seconds * 1000:.0f} {unit}" if unit.startswith("ms") else f"{seconds:.1f} {unit}"


def default_json_path() -> Path:
    """``demo.json`` in the default daemon.state_dir (/run/atlantic), where `up` keeps its state."""
    from atlantic.client.config import DaemonConfig

    return DaemonConfig().state_dir / "demo.json"


def result_doc(rows: list[Row], *, rtt_ms: float, chunks: int, date: str, notes: tuple[str, ...] = ()) -> dict:
    """The demo's results as a JSON-able document (what the table is printed from)."""
    return {"benchmark": "demo", "date": date, "rtt_ms": rtt_ms, "chunks": chunks, "notes": list(notes),
            "rows": [{"workload": r.workload, "unit": r.unit,
                      "without_s": r.without, "with_atlantic_s": r.with_atlantic,
                      "faster": r.without / r.with_atlantic if r.with_atlantic else None,
                      "without_samples_s": list(r.without_samples), "with_atlantic_samples_s": list(r.with_samples)}
                     for r in rows]}


def rows_from_doc(doc: dict) -> list[Row]:
    """The rows of a document :func:`result_doc` made (read back from its file)."""
    return [Row(r["workload"], r["unit"], r["without_s"], r["with_atlantic_s"],
                tuple(r.get("without_samples_s", ())), tuple(r.get("with_atlantic_samples_s", ())))
            for r in doc["rows"]]


def table_cells(row: Row) -> tuple[str, str, str, str]:
    """A row as printed: workload, without, with, and how many times faster."""
    faster = f"{row.without / row.with_atlantic:.2f}x" if row.with_atlantic else "-"
    return row.workload, _format(row.without, row.unit), _format(row.with_atlantic, row.unit), faster


def write_doc(doc: dict, path: Path) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a new file renamed over the old, mode 0644)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.chmod(f.name, 0o644)  # no secret in it: the proxy's address is not even there
    os.replace(f.name, path)


def run_demo(chunks: int = 30, delay_ms: float = 20, keep_lab: bool = False, ytdlp: bool = True,
             json_out: Path | None = None) -> list[Row]:
    """Run the demo, write its results to ``json_out`` (default :func:`default_json_path`), and
    print the comparison read back from that file; returns the rows."""
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
                                statistics.median(plain), statistics.median(pooled), tuple(plain), tuple(pooled)))
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
                rows.append(Row("yt-dlp, HLS stream (~20 segments of 2 MB)", "s total", plain_s, pooled_s,
                                (plain_s,), (pooled_s,)))
    finally:
        if started and not keep_lab:
            with console.status("taking the lab down"):
                labmod.down()
    notes = [f"{w.DEBIAN_YTDLP} is not installed (packaging/setup.sh installs it): its workload was skipped"] \
        if not use_ytdlp and ytdlp else []
    doc = result_doc(rows, rtt_ms=2 * delay_ms, chunks=chunks, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     notes=tuple(notes))
    path = json_out or default_json_path()
    try:
        write_doc(doc, path)
        doc = json.loads(path.read_text())  # print what the file holds
    except OSError as exc:
        console.print(f"could not write {path} ({exc.strerror}); the table below is in no file")
        path = None
    table = Table(title=f"Through a proxy at RTT {doc['rtt_ms']:g} ms: without and with Atlantic")
    for col in ("workload", "without Atlantic", "with Atlantic", "faster"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for r in rows_from_doc(doc):
        table.add_row(*table_cells(r))
    console.print(table)
    for note in doc["notes"]:
        console.print(note)
    if path is not None:
        console.print(f"results (every sample behind the table): {path}")
    console.print("HTTPS can only win the proxy leg (each TLS session is end to end); plain HTTP rides "
                  "one warm connection. Details: README, 'Measured'.")
    return rows
