"""Tables and chart for bench/suite.py: pure functions of the suite's results.

``results[rtt][workload][peer]`` is the list of one dict per repeat (see suite.py);
``results[rtt][workload] == {"skipped": why}`` when a workload could not run. Every
cell shows the median over the repeats and, in brackets, the best repeat. Each run's dict
also says how long the suite waited for Squid to go idle before it (``idle_wait_s``,
``proxy_idle``) and where in that repeat's random order the peer ran (``position``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

PEER_ORDER = ("direct", "squid -x", "ideal", "sing-box", "sing-box mtu 65520", "atlantic h1", "atlantic h2",
              "atlantic h1, tun", "atlantic h1, forward", "atlantic h1, no monitor", "atlantic h1, intercept", "atlantic h2, intercept")
# Atlantic's rows in the ratio tables; every other peer (the monitor-off one too) is a column.
ATLANTIC = ("atlantic h1", "atlantic h2", "atlantic h1, tun", "atlantic h1, forward", "atlantic h1, intercept", "atlantic h2, intercept")


@dataclass(frozen=True)
class Metric:
    """One number a workload reports: where it is in the result dict and how to read it."""

    workload: str
    key: str  # "p50", or "status_ms.p99" for a nested value
    label: str
    higher_is_better: bool = False
    digits: int = 0
    ratio: bool = True  # compare Atlantic with the peers on it
    chart: bool = False


METRICS = [
    Metric("chunks-http", "ms", "HTTP 2 MB chunk, new connection each (ms)", chart=True),
    Metric("chunks-https", "ms", "HTTPS 2 MB chunk, new connection each (ms)", chart=True),
    Metric("ytdlp-debian", "s", "yt-dlp HLS stream, Debian's: new connection per segment (s)", digits=1,
           chart=True),
    Metric("ytdlp-debian-https", "s", "yt-dlp HLS stream over HTTPS, Debian's (s)", digits=1, chart=True),
    Metric("ytdlp-pypi", "s", "yt-dlp HLS stream, PyPI's: keeps its connections (s)", digits=1, chart=True),
    Metric("small", "p50", "small request p50 (ms)", digits=2, chart=True),
    Metric("small", "p95", "small request p95 (ms)", digits=2),
    Metric("small", "p99", "small request p99 (ms)", digits=2),
    Metric("small", "per_s", "small requests per second (new connection each)", True, chart=True),
    Metric("bulk1", "MB/s", "bulk: one 100 MB download (MB/s)", True, chart=True),
    Metric("bulk4", "MB/s", "bulk: 4 x 100 MB in parallel (MB/s)", True, chart=True),
    Metric("bulk1", "daemon_cpu_s", "daemon CPU for one 100 MB (s)", digits=2, ratio=False),
    Metric("bulk4", "status_idle_ms.p50", "`status` round trip, idle, p50 (ms)", digits=2, ratio=False),
    Metric("bulk4", "status_ms.p50", "`status` round trip under bulk4, p50 (ms)", digits=2, ratio=False),
    Metric("bulk4", "status_ms.p99", "`status` round trip under bulk4, p99 (ms)", digits=2, ratio=False,
           chart=True),
    Metric("memory", "status_ms.p50", "`status` round trip under 100 streams, p50 (ms)", digits=2, ratio=False),
    Metric("memory", "status_ms.p99", "`status` round trip under 100 streams, p99 (ms)", digits=2, ratio=False),
    Metric("memory", "status_ms.report_p99", "of which the daemon building the report, p99 (ms)", digits=2,
           ratio=False),
    Metric("memory", "rss_start_mb", "daemon RSS before 100 streams (MB)", digits=1, ratio=False),
    Metric("memory", "rss_peak_mb", "daemon RSS peak, 100 x 100 MB at once (MB)", digits=1, ratio=False,
           chart=True),
    Metric("memory", "rss_end_mb", "daemon RSS after they ended (MB)", digits=1, ratio=False),
    Metric("memory", "MB/s", "100 streams at once, aggregate (MB/s)", True),
    Metric("burst", "ok", "burst: flows served, body checked", True, ratio=False),
    Metric("burst", "failed", "burst: flows failed", ratio=False),
    Metric("burst", "p50_s", "burst: median flow (s)", digits=2),
    Metric("burst", "slowest_s", "burst: slowest flow (s)", digits=2, chart=True),
]


def percentiles(values: list[float]) -> dict:
    """p50/p95/p99/max of ``values`` (nearest rank); all None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": s[-1]}


def _get(run: dict, key: str):
    for part in key.split("."):
        run = run.get(part) if isinstance(run, dict) else None
    return run


def values(results: dict, rtt: str, m: Metric, peer: str) -> list[float]:
    runs = results.get(rtt, {}).get(m.workload, {})
    return [v for r in (runs.get(peer) if isinstance(runs, dict) else None) or [] if (v := _get(r, m.key)) is not None]


def median_best(results: dict, rtt: str, m: Metric, peer: str) -> tuple[float, float] | None:
    vals = values(results, rtt, m, peer)
    if not vals:
        return None
    return statistics.median(vals), (max(vals) if m.higher_is_better else min(vals))


def peers_in(results: dict) -> list[str]:
    seen = {p for by_w in results.values() for runs in by_w.values() if isinstance(runs, dict) for p in runs}
    return [p for p in PEER_ORDER if p in seen]


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def brief(workload: str, out: dict) -> str:
    """One progress line for a finished workload run."""
    if "run_failed" in out:
        return f"FAILED: {out['run_failed']}"
    shown = [m for m in METRICS if m.workload == workload and _get(out, m.key) is not None][:3]
    return ", ".join(f"{m.key} {_fmt(_get(out, m.key), m.digits)}" for m in shown)


def speedup(m: Metric, atlantic: float, other: float) -> float:
    """How many times better Atlantic is than ``other`` on ``m`` (> 1: Atlantic is better)."""
    return atlantic / other if m.higher_is_better else other / atlantic


def _ratio(m: Metric, mine: float, other: float) -> str:
    return f"{speedup(m, mine, other):.2f}x" if mine and other else "-"


def idle_waits(results: dict, rtt: str) -> str | None:
    """One line on the waits for Squid to go idle before each run at this RTT (None if none recorded)."""
    runs = [r for by_peer in results.get(rtt, {}).values() if isinstance(by_peer, dict)
            for reps in by_peer.values() if isinstance(reps, list) for r in reps if "idle_wait_s" in r]
    if not runs:
        return None
    waits = [r["idle_wait_s"] for r in runs]
    busy = sum(1 for r in runs if r.get("proxy_idle") is False)
    return (f"Before each of the {len(runs)} runs the suite waited for Squid's origin connections to close: "
            f"median {statistics.median(waits):.1f} s, longest {max(waits):.1f} s"
            + (f"; it timed out before {busy} of them, Squid still holding some." if busy else "."))


def markdown(results: dict, meta: dict) -> str:
    peers = peers_in(results)
    how = ""
    if meta.get("seed") is not None:
        how += f" Peers ran in a random order in each repeat of each workload (seed {meta['seed']})."
    if meta.get("burst") and any("burst" in by_w for by_w in results.values()):
        how += f" Burst: {meta['burst']:,} flows at once, half HTTPS."
    lines = [(f"Machine: {meta['cpu']}, {meta['cpus']} cores, {meta['mem_gib']} GiB, Linux {meta['kernel']}, "
              f"Python {meta['python']}, {meta['sing-box']}. Date: {meta['date']}. "
              f"{meta['repeat']} repeats; cells are median (best).{how}")]
    for rtt, by_workload in results.items():
        lines += ["", f"### RTT {rtt} ms", "", "| metric | " + " | ".join(peers) + " |",
                  "|---|" + "---|" * len(peers)]
        for m in METRICS:
            cells = [median_best(results, rtt, m, p) for p in peers]
            if any(cells):
                lines.append(f"| {m.label} | " + " | ".join(
                    f"{_fmt(c[0], m.digits)} ({_fmt(c[1], m.digits)})" if c else "-" for c in cells) + " |")
        skipped = [f"{w}: {runs['skipped']}" for w, runs in by_workload.items() if "skipped" in runs]
        if skipped:
            lines += ["", "Skipped: " + "; ".join(skipped)]
        failed = [f"{w} {peer} run {i}: {run['run_failed']}" for w, runs in by_workload.items() if "skipped" not in runs
                  for peer, peer_runs in runs.items() for i, run in enumerate(peer_runs, 1) if "run_failed" in run]
        if failed:
            lines += ["", "Failed runs (left out of the medians): " + "; ".join(failed)]
        if waited := idle_waits(results, rtt):
            lines += ["", waited]
        lines += ["", f"Atlantic against each peer at RTT {rtt} ms (medians; > 1 means Atlantic is better):", "",
                  "| metric | Atlantic | " + " | ".join(f"vs {p}" for p in peers if p not in ATLANTIC) + " |",
                  "|---|---|" + "---|" * len([p for p in peers if p not in ATLANTIC])]
        for m in (m for m in METRICS if m.ratio):
            for a in ATLANTIC:
                mine = median_best(results, rtt, m, a)
                if not mine:
                    continue
                cells = []
                for p in (p for p in peers if p not in ATLANTIC):
                    other = median_best(results, rtt, m, p)
                    cells.append(_ratio(m, mine[0], other[0]) if other else "-")
                lines.append(f"| {m.label} | {a.removeprefix('atlantic ')} | " + " | ".join(cells) + " |")
        lines += ["", *goals(results, rtt)]
    return "\n".join(lines)


def _med(results: dict, rtt: str, workload: str, key: str, peer: str) -> float | None:
    got = median_best(results, rtt, Metric(workload, key, ""), peer)
    return got[0] if got else None


def goals(results: dict, rtt: str) -> list[str]:
    """Where each of the issue's goals stands at this RTT, computed from the medians."""
    out = [f"Goals at RTT {rtt} ms:"]
    for workload in ("chunks-http", "chunks-https"):
        new, ideal, sb = (_med(results, rtt, workload, "ms", p) for p in ("squid -x", "ideal", "sing-box"))
        for a in ATLANTIC:
            mine = _med(results, rtt, workload, "ms", a)
            if None in (new, ideal, mine) or new - ideal < 0.2 * new:
                continue  # no gain worth sharing at this RTT (at RTT 0 a new connection costs ~1 ms)
            share = (new - mine) / (new - ideal)
            ahead = f"; sing-box {sb:.0f} ms, Atlantic {'ahead' if mine < sb else 'behind'}" if sb else ""
            out.append(f"- {workload} {a}: {share:.0%} of the ideal client's gain (goal >= 95%): "
                       f"{new:.0f} -> {mine:.0f} ms, ideal {ideal:.0f}{ahead}")
    for workload in ("ytdlp-debian", "ytdlp-debian-https", "ytdlp-pypi"):
        proxy, ideal, sb = (_med(results, rtt, workload, "s", p) for p in ("squid -x", "ideal", "sing-box"))
        for a in ATLANTIC:
            mine = _med(results, rtt, workload, "s", a)
            if mine and proxy and sb:
                worth = ideal and proxy - ideal >= 0.2 * proxy
                share = f", {(proxy - mine) / (proxy - ideal):.0%} of the ideal client's gain" if worth else ""
                out.append(f"- {workload} {a}: {mine:.1f} s against {proxy:.1f} s with --proxy{share}; "
                           f"sing-box {sb:.1f} s ({sb / mine:.2f}x)")
    ideal = _med(results, rtt, "small", "p50", "ideal")
    for a in ATLANTIC:
        mine = _med(results, rtt, "small", "p50", a)
        if mine is not None and ideal is not None:
            out.append(f"- small p50 {a}: {mine - ideal:+.2f} ms against one warm connection (goal within 0.5 ms)")
    sb = _med(results, rtt, "small", "per_s", "sing-box")
    for a in ATLANTIC:
        mine = _med(results, rtt, "small", "per_s", a)
        if mine and sb:
            out.append(f"- new connections per second {a}: {mine:.0f}, {mine / sb:.2f}x sing-box ({sb:.0f}) (goal >= 1x)")
    for workload in ("bulk1", "bulk4"):
        sb = _med(results, rtt, workload, "MB/s", "sing-box")
        for a in ATLANTIC:
            mine = _med(results, rtt, workload, "MB/s", a)
            if mine and sb:
                out.append(f"- {workload} {a}: {mine:.0f} MB/s, {mine / sb:.2f}x sing-box ({sb:.0f} MB/s)")
    for a in ATLANTIC:
        cpu = _med(results, rtt, "bulk1", "daemon_cpu_s", a)
        if cpu is not None:
            out.append(f"- daemon CPU for one 100 MB {a}: {cpu:.2f} s (goal for h2 <= 0.5 s)")
    sb = _med(results, rtt, "burst", "slowest_s", "sing-box")
    for a in ATLANTIC:
        ok, failed, slowest = (_med(results, rtt, "burst", k, a) for k in ("ok", "failed", "slowest_s"))
        if ok is not None:
            than = f"; sing-box's slowest {sb:.2f} s" if sb is not None else ""
            out.append(f"- burst {a}: {ok:,.0f} flows served, {failed:,.0f} failed (goal 0), slowest "
                       + (f"{slowest:.2f} s" if slowest is not None else "-") + than)
    for a in ATLANTIC:
        for workload, load in (("bulk4", "4 bulk downloads"), ("memory", "100 streams")):
            p99 = _med(results, rtt, workload, "status_ms.p99", a)
            if p99 is not None:
                out.append(f"- status under {load} {a}: p99 {p99:.2f} ms (goal < 10 ms)")
        start, peak, end = (_med(results, rtt, "memory", k, a) for k in ("rss_start_mb", "rss_peak_mb", "rss_end_mb"))
        if peak is not None:
            out.append(f"- RSS {a}: {start:.0f} MB before, {peak:.0f} MB peak with 100 streams, {end:.0f} MB after "
                       "(goal < 60 MB, flat)")
    return out


def chart(results: dict, meta: dict, path: Path) -> None:
    """A PNG: one panel per headline metric, a bar per peer and RTT (median; a tick at the best)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m.chart and any(values(results, r, m, p) for r in results for p in PEER_ORDER)]
    if not shown:
        return
    cols = 3
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    rtts = list(results)
    width = 0.8 / max(len(rtts), 1)
    for ax, m in zip(axes.flat, shown):
        peers = [p for p in PEER_ORDER if any(values(results, r, m, p) for r in rtts)]
        for i, rtt in enumerate(rtts):
            cells = [median_best(results, rtt, m, p) for p in peers]
            xs = [j + (i - (len(rtts) - 1) / 2) * width for j in range(len(peers))]
            ax.bar(xs, [c[0] if c else 0 for c in cells], width, label=f"RTT {rtt} ms")
            ax.scatter([x for x, c in zip(xs, cells) if c], [c[1] for c in cells if c], marker="_", color="black",
                       zorder=3)
        ax.set_xticks(range(len(peers)), [p.replace(" ", "\n") for p in peers], fontsize=8)
        ax.set_title(f"{m.label}\n{'higher' if m.higher_is_better else 'lower'} is better", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Atlantic and peers in the lab ({meta['date']}, {meta['cpus']} cores; median, tick = best)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def merge(runs: list[dict]) -> dict:
    """One result set from several suite JSON files (the repeats of each cell add up)."""
    merged: dict = {}
    for run in runs:
        for rtt, by_workload in run["results"].items():
            for workload, by_peer in by_workload.items():
                cell = merged.setdefault(rtt, {}).setdefault(workload, {})
                for peer, reps in by_peer.items():
                    if peer == "skipped":
                        cell.setdefault("skipped", reps)
                    else:
                        cell.setdefault(peer, []).extend(reps)
    return merged


def main(argv: list[str] | None = None) -> None:
    """Merge suite result files into one report: `report.py OUT_STEM a.json b.json ...`."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out", type=Path, help="output path without suffix (writes .json, .md, .png)")
    ap.add_argument("inputs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in args.inputs]
    results = merge(runs)
    reps = {len(reps) for by_w in results.values() for by_p in by_w.values() if isinstance(by_p, dict)
            for p, reps in by_p.items() if p != "skipped"}
    seeds = [r["meta"].get("seed") for r in runs if r["meta"].get("seed") is not None]
    meta = {**runs[-1]["meta"], "repeat": f"{min(reps)}-{max(reps)}" if len(reps) > 1 else max(reps),
            "merged_from": [p.name for p in args.inputs], "seed": ", ".join(map(str, seeds)) if seeds else None}
    order = [cell for r in runs for cell in r.get("order", [])]
    args.out.with_suffix(".json").write_text(json.dumps({"benchmark": "suite", "meta": meta, "order": order,
                                                         "results": results}, indent=1))
    text = markdown(results, meta)
    args.out.with_suffix(".md").write_text(text + "\n")
    chart(results, meta, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
