"""bench/small_timeline.py: its parser (a capture's packets become per-request moments, and the
client's times split into network and local parts; a pcap written with scapy here), its
``--awake`` busy loops and its table."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import small_timeline
from scapy.all import IP, TCP, Ether, Raw, wrpcap

PROXY, LISTENER = 3128, 35000


def packet(t: float, sport: int, dport: int, payload: bytes = b""):
    p = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=dport, flags="PA" if payload else "A")
    if payload:
        p = p / Raw(payload)
    p.time = t
    return p


def test_moments_through_the_daemon_skip_the_monitors_probes(tmp_path):
    """An application's request is followed from its GET to the daemon's HTTP/ answer; a probe
    on the proxy connection with no application request around it is not a request."""
    pcap = tmp_path / "a.pcap"
    wrpcap(str(pcap), [
        packet(1.000, 50000, LISTENER, b"GET /small HTTP/1.1\r\n"), packet(1.001, 40000, PROXY, b"GET /small"),
        packet(1.002, PROXY, 40000), packet(1.081, PROXY, 40000, b"HTTP/1.1 200 OK"),
        packet(1.082, 80, 50000, b"HTTP/1.1 200 OK"),
        packet(1.500, 40000, PROXY, b"GET /probe"), packet(1.580, PROXY, 40000, b"HTTP/1.1 200 OK"),
        packet(2.000, 50002, LISTENER, b"GET /small HTTP/1.1\r\n"), packet(2.0005, 40000, PROXY, b"GET /small"),
        packet(2.080, PROXY, 40000, b"HTTP/1.1 200 OK"), packet(2.081, 80, 50002, b"HTTP/1.1 200 OK"),
    ])
    marks = small_timeline.moments(pcap, PROXY, through_daemon=True)
    assert [sorted(m) for m in marks] == [["app_req", "app_resp", "up_req", "up_resp"]] * 2
    row = small_timeline.split([0.083, 0.082], marks)
    assert row["n"] == 2
    assert row["network_ms"] == pytest.approx(79.75)
    assert row["in_ms"] == pytest.approx(0.75) and row["out_ms"] == pytest.approx(1.0)
    assert row["local_ms"] == pytest.approx(82.5 - 79.75)


def test_moments_of_the_ideal_client_pair_each_request_with_its_answer(tmp_path):
    pcap = tmp_path / "b.pcap"
    wrpcap(str(pcap), [
        packet(1.0, 40000, PROXY, b"GET http://o/small"), packet(1.08, PROXY, 40000, b"HTTP/1.1 200 OK"),
        packet(1.1, 40000, PROXY, b"GET http://o/small"), packet(1.18, PROXY, 40000, b"HTTP/1.1 200 OK"),
    ])
    marks = small_timeline.moments(pcap, PROXY, through_daemon=False)
    assert len(marks) == 2 and all(sorted(m) == ["up_req", "up_resp"] for m in marks)
    row = small_timeline.split([0.0805, 0.0803, 0.0804], marks)  # the first time has no capture: dropped
    assert row["n"] == 2 and "in_ms" not in row
    assert row["network_ms"] == pytest.approx(80.0)


def test_cpus_awake_starts_a_busy_loop_per_cpu_and_ends_them_all():
    with small_timeline.cpus_awake(True):
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_spinner_of_ours(p)]
        assert len(children) == os.cpu_count()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_nice(p) == 19 for p in children):  # each renices itself
            time.sleep(0.05)
        assert all(_nice(p) == 19 for p in children)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_is_spinner_of_ours(p) for p in children if p.exists()):
        time.sleep(0.05)
    assert not any(p.exists() and _is_spinner_of_ours(p) for p in children)
    with small_timeline.cpus_awake(False):
        assert not any(_is_spinner_of_ours(p) for p in Path("/proc").iterdir() if p.name.isdigit())


def _nice(proc: Path) -> int:
    return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[16])


def _is_spinner_of_ours(proc: Path) -> bool:
    try:
        stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        return int(stat[1]) == os.getpid() and stat[0] != "Z" and b"os.nice(19)" in (proc / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_the_table_marks_the_awake_rows():
    result = {"meta": {"rtt_ms": 40.0, "awake": True}, "rows": [
        {"peer": "atlantic h1", "repeat": 1, "awake": False, "client_ms": 83.2, "network_ms": 81.8, "local_ms": 1.4,
         "in_ms": 0.53, "out_ms": 0.55},
        {"peer": "atlantic h1", "repeat": 1, "awake": True, "client_ms": 83.1, "network_ms": 81.3, "local_ms": 1.6,
         "in_ms": 0.32, "out_ms": 0.50}]}
    result["rows"][0].update(cpu_ms=0.95, background_ms=0.1, waiting_ms=0.04)
    text = small_timeline.table(result)
    assert "| atlantic h1 | 1 | 83.20 | 81.80 | 1.40 | 0.53 | 0.55 | 0.95 | 0.10 | 0.04 |" in text
    assert "| atlantic h1 awake | 1 | 83.10 | 81.30 | 1.60 | 0.32 | 0.50 | - | - | - |" in text
    assert "no CPU halts" in text.splitlines()[0]


def test_daemon_clock_sums_the_cpu_time_of_every_thread():
    """Two threads of this process busy for a while both show in its time on a CPU (the
    worker is still alive when read: a thread that ended takes its share with it)."""
    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    measured = threading.Event()
    spun = threading.Event()

    def work() -> None:
        spin(0.2)
        spun.set()
        measured.wait(30)

    before = small_timeline.daemon_clock(os.getpid())
    worker = threading.Thread(target=work)
    worker.start()
    try:
        spin(0.1)  # this thread too
        assert spun.wait(30)
        on_cpu, waiting = (a - b for a, b in zip(small_timeline.daemon_clock(os.getpid()), before))
    finally:
        measured.set()
        worker.join(30)
    assert on_cpu >= 0.3 * 0.95  # schedstat and thread_time count the same nanoseconds
    assert waiting >= 0
