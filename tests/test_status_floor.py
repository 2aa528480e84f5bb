"""bench/status_floor.py's floor server and its table (the lab run itself is a benchmark)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import status_floor

from atlantic.client.control import ControlError, request


def test_the_floor_server_answers_every_request_with_the_daemons_report(tmp_path):
    (tmp_path / "report.json").write_text('{"state": "up", "flows_total": 7}')
    path = tmp_path / "floor.sock"
    server = subprocess.Popen([sys.executable, status_floor.__file__, "--floor-server", str(path),
                               str(tmp_path / "report.json")])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = request(path, "status")
                break
            except ControlError:
                assert time.monotonic() < deadline, "the floor server never answered"
                time.sleep(0.05)
        assert first == {"state": "up", "flows_total": 7}
        assert [request(path, "status") for _ in range(3)] == [first] * 3
    finally:
        server.kill()
        server.wait(10)


def test_quantiles_refuse_too_few_round_trips_for_a_p99():
    got = status_floor.quantiles([float(i) for i in range(1, 101)])
    assert got == {"p50": 51.0, "p95": 95.0, "p99": 99.0, "max": 100.0, "n": 100}  # the suite's nearest rank
    with pytest.raises(RuntimeError, match="only 3 round trips"):
        status_floor.quantiles([1.0, 2.0, 3.0])


def test_the_table_puts_the_daemon_and_the_floor_side_by_side():
    q = {"p50": 0.9, "p95": 4.7, "p99": 9.6, "max": 36.3, "n": 2257}
    f = {"p50": 0.3, "p95": 1.0, "p99": 5.9, "max": 13.3, "n": 2257}
    text = status_floor.table({"meta": {"peer": "atlantic h2"}, "runs": [{"daemon": q, "floor": f}]})
    assert "| 1 | daemon | 0.90 | 4.70 | 9.60 | 36.30 | 2257 |" in text
    assert "| 1 | floor | 0.30 | 1.00 | 5.90 | 13.30 | 2257 |" in text
