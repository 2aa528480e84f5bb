"""Packet parsing (every malformation is a MalformedPacket) and the packets the stack builds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPOption_NOP, raw

from atlantic.interceptor import packet as P


def test_parse_ipv4_tcp():
    """An IPv4 TCP segment yields addresses, ports, flags and payload length."""
    pkt = raw(IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1000, dport=80, flags="PA") / b"hello")
    info = P.parse(pkt)
    assert (info.version, info.protocol, info.header_len, info.total_len) == (4, 6, 20, 45)
    assert (info.src, info.dst) == (bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]))
    assert (info.sport, info.dport, info.tcp_flags, info.payload_len) == (1000, 80, P.TCP_PSH | P.TCP_ACK, 5)
    assert not info.is_fragment


def test_parse_ipv4_options_and_offset():
    """IP options move the transport header; a non-zero start offset is honoured."""
    pkt = raw(IP(src="1.2.3.4", dst="5.6.7.8", options=[IPOption_NOP()] * 4) / TCP(sport=7, dport=9))
    info = P.parse(b"\xff" * 10 + pkt, 10)
    assert info.header_len == 24 and (info.sport, info.dport) == (7, 9)


def test_parse_udp_icmp_and_fragment():
    """UDP carries ports, ICMP only addresses; a fragment is flagged and portless."""
    assert P.parse(raw(IP() / UDP(sport=5, dport=443) / b"q")).dport == 443
    assert P.parse(raw(IP() / ICMP())).protocol == P.PROTO_ICMP
    frag = P.parse(raw(IP(flags="MF") / TCP()))
    assert frag.is_fragment and frag.sport == 0
    assert P.parse(raw(IP(frag=100) / (b"x" * 20))).is_fragment


def test_parse_ipv6_with_extension_headers():
    """IPv6 walks extension headers to TCP; a fragment header is flagged."""
    info = P.parse(raw(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / TCP(sport=1, dport=443)))
    assert (info.version, info.protocol, info.header_len, info.dport) == (6, 6, 48, 443)
    assert P.parse(raw(IPv6() / IPv6ExtHdrFragment() / UDP())).is_fragment
    assert P.format_addr(info.dst) == "fd00::2"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x45" * 19,
        raw(IP() / TCP())[:30],  # truncated TCP
        b"\x44" + raw(IP() / TCP())[1:],  # IHL 4
        b"\x55" + raw(IP() / TCP())[1:],  # version 5
        raw(IP(len=200) / TCP()),  # claims more than there is
        raw(IP(len=10) / TCP()),  # total length below the header
        raw(IP() / TCP(dataofs=3)),  # TCP header shorter than 20
        raw(IP() / TCP(dataofs=15)),  # TCP header longer than the packet
        raw(IP() / UDP(len=4)),
        raw(IPv6())[:30],
        raw(IPv6(plen=100) / TCP()),
    ],
)
def test_malformed_packets_raise(data):
    """Each malformation raises MalformedPacket, not any other error."""
    with pytest.raises(P.MalformedPacket):
        P.parse(data)


@given(st.binary(max_size=120))
def test_parse_random_bytes_never_crashes(data):
    """Random bytes either parse or raise MalformedPacket."""
    try:
        info = P.parse(data)
    except P.MalformedPacket:
        return
    assert info.total_len <= len(data)


def test_rst_reply_to_ack_segment():
    """A RST answering an ACK segment takes its seq from the ACK number, checksums valid."""
    pkt = raw(IP(src="198.18.0.1", dst="10.0.0.9") / TCP(sport=4000, dport=80, flags="A", seq=10, ack=777))
    rst = IP(P.build_rst_reply(pkt, 0, P.parse(pkt)))
    assert (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == ("10.0.0.9", "198.18.0.1", 80, 4000)
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777
    assert_checksums_valid(raw(rst))


def test_rst_reply_to_data_without_ack():
    """A RST answering a segment without ACK acknowledges its sequence space."""
    pkt = raw(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2, flags="F", seq=100) / b"abc")
    rst = IP(P.build_rst_reply(pkt, 0, P.parse(pkt)))
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 104 and rst[TCP].seq == 0


def test_icmp_port_unreachable_quotes_the_datagram():
    """The ICMP error goes back to the sender and quotes the IP header plus 8 bytes."""
    pkt = raw(IP(src="198.18.0.1", dst="10.0.0.9") / UDP(sport=5555, dport=443) / (b"q" * 50))
    icmp = IP(P.build_icmp_unreachable(pkt, 0, P.parse(pkt)))
    assert (icmp.src, icmp.dst, icmp[ICMP].type, icmp[ICMP].code) == ("10.0.0.9", "198.18.0.1", 3, 3)
    assert raw(icmp[ICMP].payload) == pkt[:28]
    assert_checksums_valid(raw(icmp))


def assert_checksums_valid(data: bytes) -> None:
    """Helper: scapy recomputes every checksum to the same values."""
    pkt = IP(data)
    clean = pkt.copy()
    del clean.chksum
    for layer in (TCP, UDP, ICMP):
        if layer in clean:
            del clean[layer].chksum
    assert raw(IP(raw(clean))) == data
