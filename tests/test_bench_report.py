"""bench/report.py: the suite's tables, goals and chart from a hand-made result set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import report

META = {"cpu": "Test CPU", "cpus": 2, "mem_gib": 24.0, "kernel": "6.1", "python": "3.11.7",
        "sing-box": "sing-box version 1.14.4", "date": "2026-11-22 03:00 UTC", "repeat": 2}


def results() -> dict:
    chunk = {"squid -x": [{"ms": 420}, {"ms": 430}], "ideal": [{"ms": 100}, {"ms": 96}],
             "sing-box": [{"ms": 500}, {"ms": 520}], "atlantic h1": [{"ms": 110}, {"ms": 104}]}
    return {"40": {
        "chunks-http": chunk,
        "small": {"ideal": [{"p50": 83.0, "p95": 85.0, "p99": 86.0, "per_s": 12.0}],
                  "atlantic h1": [{"p50": 84.5, "p95": 86.0, "p99": 90.0, "per_s": 11.8}]},
        "bulk1": {"sing-box": [{"MB/s": 200.0}], "atlantic h1": [{"MB/s": 100.0, "daemon_cpu_s": 1.0}]},
        "bulk4": {"atlantic h1": [{"MB/s": 150.0, "status_ms": {"p50": 1.0, "p99": 4.0},
                                   "status_idle_ms": {"p50": 0.5}}]},
        "memory": {"atlantic h1": [{"rss_start_mb": 40.0, "rss_peak_mb": 60.0, "rss_end_mb": 42.0}]},
        "ytdlp-pypi": {"skipped": "/x/yt-dlp is not installed"},
    }}


def test_cells_show_median_and_best_per_direction():
    m_time = report.Metric("chunks-http", "ms", "x")
    m_rate = report.Metric("bulk1", "MB/s", "y", higher_is_better=True)
    assert report.median_best(results(), "40", m_time, "squid -x") == (425, 420)
    assert report.median_best(results(), "40", m_rate, "sing-box") == (200.0, 200.0)
    assert report.median_best(results(), "40", m_time, "direct") is None


def test_speedup_reads_the_same_way_for_times_and_rates():
    assert report.speedup(report.Metric("w", "ms", ""), atlantic=100, other=400) == 4
    assert report.speedup(report.Metric("w", "MB/s", "", higher_is_better=True), atlantic=100, other=200) == 0.5


def test_markdown_has_every_peer_skips_and_goals():
    text = report.markdown(results(), META)
    assert "| metric | squid -x | ideal | sing-box | atlantic h1 |" in text
    assert "| HTTP 2 MB chunk, new connection each (ms) | 425 (420) | 98 (96) | 510 (500) | 107 (104) |" in text
    assert "Skipped: ytdlp-pypi: /x/yt-dlp is not installed" in text
    # gain share: (425 - 107) / (425 - 98) = 97%, and ahead of sing-box
    assert "chunks-http atlantic h1: 97% of the ideal client's gain" in text and "Atlantic ahead" in text
    assert "small p50 atlantic h1: +1.50 ms" in text
    assert "bulk1 atlantic h1: 100 MB/s, 0.50x sing-box" in text
    assert "status under 4 bulk downloads atlantic h1: p99 4.00 ms" in text
    assert "RSS atlantic h1: 40 MB before, 60 MB peak" in text


def test_percentiles_nearest_rank_and_empty():
    got = report.percentiles([float(x) for x in range(1, 101)])
    assert (got["p50"], got["p99"], got["max"]) == (51.0, 99.0, 100.0)
    assert report.percentiles([])["p50"] is None


def test_chart_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    report.chart(results(), META, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_adds_repeats_and_keeps_skips():
    a = {"results": {"40": {"small": {"ideal": [{"p50": 1.0}]}, "ytdlp-pypi": {"skipped": "no"}}}}
    b = {"results": {"40": {"small": {"ideal": [{"p50": 3.0}], "atlantic h1": [{"p50": 2.0}]}},
                     "0": {"small": {"ideal": [{"p50": 0.5}]}}}}
    merged = report.merge([a, b])
    assert merged["40"]["small"]["ideal"] == [{"p50": 1.0}, {"p50": 3.0}]
    assert merged["40"]["ytdlp-pypi"] == {"skipped": "no"} and merged["0"]["small"]["ideal"] == [{"p50": 0.5}]


def new_rows() -> dict:
    """Both sing-box rows, intercept peers, the burst and the HTTPS yt-dlp, with the suite's
    per-run wait records."""
    waited = {"idle_wait_s": 2.0, "proxy_idle": True, "position": 1}
    return {"40": {
        "chunks-https": {"sing-box": [{"ms": 500, **waited}], "sing-box mtu 65520": [{"ms": 400, **waited}],
                         "atlantic h1": [{"ms": 200, **waited}],
                         "atlantic h1, intercept": [{"ms": 100, "idle_wait_s": 61.0, "proxy_idle": False}]},
        "ytdlp-debian-https": {"squid -x": [{"s": 9.0}], "atlantic h1": [{"s": 3.0}]},
        "burst": {"direct": [{"ok": 1000, "failed": 0, "p50_s": 0.5, "slowest_s": 1.0}],
                  "sing-box": [{"ok": 990, "failed": 10, "p50_s": 1.0, "slowest_s": 8.0}],
                  "sing-box mtu 65520": [{"ok": 1000, "failed": 0, "p50_s": 1.0, "slowest_s": 6.0}],
                  "atlantic h1": [{"ok": 1000, "failed": 0, "p50_s": 0.8, "slowest_s": 2.0}]},
    }}


def test_markdown_shows_sing_box_at_both_mtus_and_intercept_as_atlantic_rows():
    """sing-box at MTU 65520 is a column beside sing-box; the intercept peers are Atlantic rows
    in the ratio table, each compared with both sing-box rows side by side."""
    text = report.markdown(new_rows(), {**META, "seed": 1234, "burst": 1000})
    assert ("| metric | direct | squid -x | sing-box | sing-box mtu 65520 | atlantic h1 | atlantic h1, intercept |"
            in text)
    assert ("| HTTPS 2 MB chunk, new connection each (ms) | - | - | 500 (500) | 400 (400) | 200 (200) | 100 (100) |"
            in text)
    assert "| metric | Atlantic | vs direct | vs squid -x | vs sing-box | vs sing-box mtu 65520 |" in text
    assert "| HTTPS 2 MB chunk, new connection each (ms) | h1 | - | - | 2.50x | 2.00x |" in text
    assert "| HTTPS 2 MB chunk, new connection each (ms) | h1, intercept | - | - | 5.00x | 4.00x |" in text
    assert "| yt-dlp HLS stream over HTTPS, Debian's (s) | - | 9.0 (9.0) |" in text


def test_markdown_shows_the_burst_rows_ratios_and_goal():
    """The burst's ok/failed counts and slowest flow are rows; the slowest flow gets ratios,
    the counts do not; the goals line gives Atlantic's counts beside sing-box's slowest flow."""
    text = report.markdown(new_rows(), {**META, "seed": 1234, "burst": 1000})
    assert "| burst: flows served, body checked | 1,000 (1,000) | - | 990 (990) | 1,000 (1,000) | 1,000 (1,000) | - |" \
        in text
    assert "| burst: flows failed | 0 (0) | - | 10 (10) | 0 (0) | 0 (0) | - |" in text
    assert "| burst: slowest flow (s) | h1 | 0.50x | - | 4.00x | 3.00x |" in text
    assert not any(line.startswith("| burst: flows failed | h1") for line in text.splitlines())
    assert "- burst atlantic h1: 1,000 flows served, 0 failed (goal 0), slowest 2.00 s; sing-box's slowest 8.00 s" \
        in text
    assert "Burst: 1,000 flows at once, half HTTPS." in text


def test_markdown_states_the_seed_and_the_idle_waits():
    """The header names the order's seed; each RTT says how long the waits for Squid took and
    how many timed out."""
    text = report.markdown(new_rows(), {**META, "seed": 1234, "burst": 1000})
    assert "random order in each repeat of each workload (seed 1234)" in text
    assert ("Before each of the 4 runs the suite waited for Squid's origin connections to close: median 2.0 s, "
            "longest 61.0 s; it timed out before 1 of them, Squid still holding some.") in text
    assert "seed" not in report.markdown(results(), META)  # results without a seed say nothing of one


def test_main_merges_orders_and_seeds(tmp_path):
    """Merging suite files keeps every run's order cells and names all their seeds."""
    import json

    cell = {"rtt": "40", "repeat": 1, "workload": "burst", "peers": ["atlantic h1", "direct"], "idle_wait_s": [0, 1]}
    for i, seed in enumerate((5, 6)):
        (tmp_path / f"{i}.json").write_text(json.dumps({"meta": {**META, "seed": seed}, "order": [cell],
                                                        "results": new_rows()}))
    report.main([str(tmp_path / "merged"), str(tmp_path / "0.json"), str(tmp_path / "1.json")])
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["meta"]["seed"] == "5, 6" and merged["order"] == [cell, cell]
    assert "(seed 5, 6)" in (tmp_path / "merged.md").read_text()


def test_a_failed_run_is_listed_and_left_out_of_the_medians():
    """A peer's run that raised is recorded with its reason: the medians use the other runs,
    the report lists the failure, the progress line says FAILED."""
    res = results()
    res["40"]["small"]["sing-box"] = [{"run_failed": "RuntimeError: server closed the connection"},
                                      {"p50": 120.0, "p95": 130.0, "p99": 140.0, "per_s": 8.0}]
    assert report.median_best(res, "40", report.Metric("small", "p50", ""), "sing-box") == (120.0, 120.0)
    text = report.markdown(res, META)
    assert "Failed runs (left out of the medians): small sing-box run 1: RuntimeError: server closed" in text
    assert report.brief("small", res["40"]["small"]["sing-box"][0]).startswith("FAILED: RuntimeError")


def test_a_burst_run_with_its_failed_count_is_not_a_failed_run():
    """The burst workload's own ``failed`` count (flows) is a metric, never a failed run."""
    res = results()
    res["40"]["burst"] = {"atlantic h1": [{"ok": 1000, "failed": 0, "p50_s": 1.0, "slowest_s": 2.0}]}
    text = report.markdown(res, META)
    assert "Failed runs" not in text and "| burst: flows failed | - | - | - | 0 (0) |" in text
