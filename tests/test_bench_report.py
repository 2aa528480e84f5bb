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
