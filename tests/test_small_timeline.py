"""bench/small_timeline.py's parser: a capture's packets become per-request moments, and the
client's times split into network and local parts (a pcap written with scapy here)."""

from __future__ import annotations

import sys
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
