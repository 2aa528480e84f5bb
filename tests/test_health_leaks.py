"""Leak classification (health/leaks.py) on frames crafted with scapy: link plumbing and the
daemon's TCP to its upstream are allowed, everything else that left the interface is a leak."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import (
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_Redirect,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    IPv6,
    IPOption_NOP,
    IPv6ExtHdrHopByHop,
)

from atlantic.health.leaks import FrameSummary, LeakReport, Verdict, classify, summarize, verdict

CLIENT4, PEER4 = "10.200.0.1", "10.200.0.2"
CLIENT6, PEER6 = "2001:db8:200::1", "2001:db8:200::2"
UPSTREAM = (PEER4, 3128)


def frame(packet) -> bytes:
    """The bytes an AF_PACKET capture would hand over."""
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)


LINK_CONTROL = {
    "arp request": ARP(psrc=CLIENT4, pdst=PEER4),
    "neighbour solicitation": IPv6(src=CLIENT6, dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=PEER6),
    "neighbour advertisement": IPv6(src=CLIENT6, dst=PEER6) / ICMPv6ND_NA(tgt=CLIENT6),
    "router solicitation": IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS(),
    "router advertisement": IPv6(src="fe80::2", dst="ff02::1") / ICMPv6ND_RA(),
    "MLD report while the interface comes up": IPv6(src="::", dst="ff02::16") / IPv6ExtHdrHopByHop()
    / ICMPv6MLReport2(),
}

LEAKS = {
    "tcp syn": (IP(src=CLIENT4, dst="203.0.113.5") / TCP(dport=80, flags="S"),
                "IPv4 proto 6 10.200.0.1 -> 203.0.113.5"),
    "udp 443 (QUIC)": (IP(src=CLIENT4, dst="203.0.113.5") / UDP(dport=443),
                       "IPv4 proto 17 10.200.0.1 -> 203.0.113.5"),
    "dns to the LAN resolver": (IP(src=CLIENT4, dst=PEER4) / UDP(dport=53),
                                "IPv4 proto 17 10.200.0.1 -> 10.200.0.2"),
    "ping": (IP(src=CLIENT4, dst=PEER4) / ICMP(), "IPv4 proto 1 10.200.0.1 -> 10.200.0.2"),
    "ipv6 tcp": (IPv6(src=CLIENT6, dst=PEER6) / TCP(dport=443),
                 "IPv6 nh 6 2001:db8:200::1 -> 2001:db8:200::2"),
    "ipv6 ping": (IPv6(src=CLIENT6, dst=PEER6) / ICMPv6EchoRequest(),
                  "IPv6 nh 58 2001:db8:200::1 -> 2001:db8:200::2"),
    "ipv6 redirect (not neighbour discovery)": (IPv6(src=CLIENT6, dst=PEER6) / ICMPv6ND_Redirect(),
                                                "IPv6 nh 58 2001:db8:200::1 -> 2001:db8:200::2"),
    "unspecified source to a global address": (IPv6(src="::", dst=PEER6) / UDP(dport=547),
                                               "IPv6 nh 17 :: -> 2001:db8:200::2"),
}


@pytest.mark.parametrize("name", LINK_CONTROL)
def test_link_plumbing_is_allowed(name):
    """ARP, neighbour discovery and MLD from the unspecified address carry no address of ours."""
    report = classify([frame(LINK_CONTROL[name])])
    assert report == LeakReport(leaks=(), link_control=1, upstream=0) and report.is_clean


@pytest.mark.parametrize("name", LEAKS)
def test_ip_traffic_is_a_leak_described_in_one_line(name):
    """Any other IP frame is a leak, described by family, protocol and addresses."""
    packet, description = LEAKS[name]
    report = classify([frame(packet)])
    assert not report.is_clean and report.descriptions() == (description,)


def test_upstream_tcp_is_allowed_only_when_named_and_only_tcp():
    """The daemon's TCP to and from a named upstream is allowed; other ports, UDP, or no
    upstream given (the tests' positive control) are leaks."""
    out = frame(IP(src=CLIENT4, dst=PEER4) / TCP(sport=40000, dport=3128, flags="S"))
    back = frame(IP(src=PEER4, dst=CLIENT4) / TCP(sport=3128, dport=40000, flags="SA"))
    other_port = frame(IP(src=CLIENT4, dst=PEER4) / TCP(dport=8080))
    udp = frame(IP(src=CLIENT4, dst=PEER4) / UDP(sport=40000, dport=3128))
    report = classify([out, back, other_port, udp], upstreams=[UPSTREAM])
    assert report.upstream == 2
    assert report.descriptions() == ("IPv4 proto 6 10.200.0.1 -> 10.200.0.2",
                                     "IPv4 proto 17 10.200.0.1 -> 10.200.0.2")
    assert classify([out]).descriptions() == ("IPv4 proto 6 10.200.0.1 -> 10.200.0.2",)


def test_upstream_addresses_are_compared_as_addresses():
    """An IPv6 upstream written in a long form still matches its compressed form on the wire."""
    out = frame(IPv6(src=CLIENT6, dst=PEER6) / TCP(dport=3128))
    assert classify([out], upstreams=[("2001:0db8:0200:0:0:0:0:0002", 3128)]).upstream == 1


def test_ipv4_options_shift_the_tcp_ports():
    """Ports are read after the IPv4 header's real length (IHL), options included."""
    out = frame(IP(src=CLIENT4, dst=PEER4, options=[IPOption_NOP()] * 4) / TCP(sport=1, dport=3128))
    summary = summarize(out)
    assert (summary.sport, summary.dport) == (1, 3128)
    assert verdict(summary, frozenset({UPSTREAM})) is Verdict.UPSTREAM


def test_report_keeps_capture_order_and_counts():
    """Leaks come back in capture order, allowed frames only as counts."""
    frames = [frame(LEAKS["ping"][0]), frame(LINK_CONTROL["arp request"]), frame(LEAKS["tcp syn"][0]),
              frame(LINK_CONTROL["neighbour solicitation"])]
    report = classify(frames)
    assert report.descriptions() == (LEAKS["ping"][1], LEAKS["tcp syn"][1])
    assert (report.link_control, report.upstream) == (2, 0)
    assert classify([]) == LeakReport((), 0, 0)


@pytest.mark.parametrize("raw, description", [
    (b"\x02" * 10, "runt frame (10 bytes)"),
    (frame(IP(src=CLIENT4, dst=PEER4))[:14 + 12], "ethertype 0x0800 (truncated, 26 bytes)"),
    (frame(IPv6(src=CLIENT6, dst=PEER6))[:14 + 30], "ethertype 0x86dd (truncated, 44 bytes)"),
    (bytes(Ether(type=0x88B5) / b"local experimental"), "ethertype 0x88b5"),
])
def test_unreadable_frames_are_leaks(raw, description):
    """Frames too short or of an unknown kind are reported, never waved through."""
    assert classify([raw]).descriptions() == (description,)


def test_a_truncated_tcp_header_to_the_upstream_is_a_leak():
    """Without its ports a TCP frame cannot be shown to be the daemon's: a leak."""
    raw = frame(IP(src=CLIENT4, dst=PEER4) / TCP(dport=3128))[:14 + 20 + 2]
    assert classify([raw], upstreams=[UPSTREAM]).upstream == 0


def test_results_are_frozen():
    """Summaries and reports are immutable values."""
    report = classify([frame(LEAKS["ping"][0])])
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.upstream = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.leaks[0].src = "x"  # type: ignore[misc]
    assert isinstance(report.leaks[0], FrameSummary)


@given(st.binary(max_size=128))
def test_any_bytes_classify_without_raising(data):
    """Whatever a capture hands over, classification answers (one verdict per frame)."""
    report = classify([data])
    assert len(report.leaks) + report.link_control + report.upstream == 1
