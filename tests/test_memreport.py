"""The daemon's memory diagnosis (``memory`` control command) and the allocator settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tracemalloc

import pytest

from atlantic.client.allocator import Allocator
from atlantic.client.memreport import MemoryReport, rss_kib, start_tracing_from_env

_kept: list[bytes] = []


def _grow() -> None:
    _kept.extend(b"x" * 4096 + bytes([i % 256]) for i in range(500))


def test_report_without_tracing_gives_rss_and_a_hint():
    """Untraced, the report has RSS and says how to turn tracing on (never starts it itself)."""
    assert not tracemalloc.is_tracing()
    reply = MemoryReport().report()
    assert reply["rss_kib"] == rss_kib() or abs(reply["rss_kib"] - rss_kib()) < 10_000
    assert reply["tracing"] is False and "ATLANTIC_TRACEMALLOC" in reply["hint"]
    assert not tracemalloc.is_tracing()


def test_growth_between_two_reports_names_the_allocating_line():
    """The second report lists the site that grew since the first, innermost frame first."""
    tracemalloc.start(5)
    try:
        report = MemoryReport(top=5)
        first = report.report()
        assert "largest" in first and first["traced_kib"] >= 0
        _grow()
        second = report.report()
        top = second["growth"][0]
        assert top["where"][0].endswith(f"test_memreport.py:{_grow.__code__.co_firstlineno + 1}")
        assert top["grew_kib"] > 1500 and top["grew_count"] >= 500
        assert "growth" not in report.report(sites=False)
    finally:
        tracemalloc.stop()
        _kept.clear()


def test_tracing_starts_only_from_a_sane_environment_value(monkeypatch):
    """ATLANTIC_TRACEMALLOC must be 1-100 frames; anything else leaves tracing off."""
    code = ("import tracemalloc; from atlantic.client.memreport import start_tracing_from_env as s; "
            "n = s(); print(n, tracemalloc.is_tracing())")
    for value, expected in (("12", "12 True"), ("0", "0 False"), ("abc", "0 False"), ("1000", "0 False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, ATLANTIC_TRACEMALLOC=value)).stdout.strip()
        assert out == expected, value
    monkeypatch.delenv("ATLANTIC_TRACEMALLOC", raising=False)
    assert start_tracing_from_env() == 0 and not tracemalloc.is_tracing()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
def test_allocator_settings_apply_on_glibc_and_trim_runs():
    """On glibc the mmap threshold and arena cap are accepted and malloc_trim runs."""
    alloc = Allocator()
    assert alloc.is_glibc
    assert alloc.tune() is True
    junk = [bytes(200_000) for _ in range(50)]
    del junk
    alloc.trim()
    assert alloc.trims == 1
