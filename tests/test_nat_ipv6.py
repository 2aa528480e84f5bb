"""The IPv6 NAT: rewriting both ways, checksums, shared port space with IPv4, bad input."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPv6, IPv6ExtHdrDestOpt, raw

from atlantic.interceptor import checksum as ck
from atlantic.interceptor import nat as N
from atlantic.interceptor.nat6 import NatTable6
from atlantic.interceptor.packet import VNET_HDR_LEN

INET6 = "fd00:a71a::1"
CLIENT6 = "fd00:a71a::2"
LPORT = 7890
APP = "2001:db8::10"
DEST = "2001:db8:1::9"


def table6(**kw) -> NatTable6:
    cfg = N.NatConfig(ipaddress.IPv6Address(INET6).packed, ipaddress.IPv6Address(CLIENT6).packed, LPORT, **kw)
    return NatTable6(cfg)


def seg(src=APP, dst=DEST, sport=40000, dport=443, flags="A", payload=b"") -> bytearray:
    return bytearray(raw(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload))


def run(t, pkt: bytearray, now: float = 0.0, partial: bool = False) -> int:
    return t.translate(pkt, 0, len(pkt), now, partial)


def assert_valid(pkt: bytes) -> None:
    """The TCP checksum equals a full recomputation, bit for bit."""
    l4 = bytearray(pkt[40:])
    l4[16:18] = b"\0\0"
    assert struct.unpack_from("!H", pkt, 56)[0] == ck.l4_checksum(pkt[8:24], pkt[24:40], 6, l4)


def open_flow(t, sport=40000) -> int:
    p = seg(sport=sport, flags="S")
    assert run(t, p) == N.UP
    return IPv6(bytes(p))[TCP].sport


def test_syn_is_rewritten_to_the_ipv6_listener():
    """An IPv6 SYN becomes virtual-client:n -> [fd00:a71a::1]:L with a valid checksum; lookup finds it."""
    t = table6()
    p = seg(flags="S")
    assert run(t, p) == N.UP
    out = IPv6(bytes(p))
    assert (out.src, out.dst, out[TCP].dport) == (CLIENT6, INET6, LPORT)
    assert_valid(bytes(p))
    assert t.lookup(out[TCP].sport) == ((APP, 40000), (DEST, 443))


@given(st.binary(max_size=300), st.booleans())
def test_both_directions_round_trip_with_valid_checksums(payload, with_vnet):
    """Data both ways (fast path, behind a virtio header or not) is rewritten with checksums equal to recompute."""
    t = table6()
    n = open_flow(t)
    off = VNET_HDR_LEN if with_vnet else 0
    up = bytearray(off) + seg(flags="PA", payload=payload)
    assert t.translate(up, off, len(up), 1.0, False) == N.UP
    assert_valid(bytes(up[off:]))
    down = bytearray(off) + seg(INET6, CLIENT6, LPORT, n, "PA", payload)
    assert t.translate(down, off, len(down), 1.0, False) == N.DOWN
    assert bytes(down[off:]) == bytes(seg(DEST, APP, 443, 40000, "PA", payload))


@given(st.binary(max_size=200), st.booleans())
def test_partial_checksum_tracks_the_ipv6_pseudo_header(payload, up):
    """With NEEDS_CSUM the field holds the IPv6 pseudo-header sum, and stays the new one after the rewrite."""
    t = table6()
    n = open_flow(t)
    p = seg(payload=payload) if up else seg(INET6, CLIENT6, LPORT, n, payload=payload)
    seg_len = len(p) - 40
    p[56:58] = ck.pseudo_header_sum(bytes(p[8:24]), bytes(p[24:40]), 6, seg_len).to_bytes(2, "big")
    assert run(t, p, partial=True) == (N.UP if up else N.DOWN)
    assert struct.unpack_from("!H", p, 56)[0] == ck.pseudo_header_sum(bytes(p[8:24]), bytes(p[24:40]), 6, seg_len)


def test_ipv4_and_ipv6_tables_never_share_a_port():
    """With peers set, a NAT port names one flow whatever its family (lookup stays unambiguous)."""
    t4 = N.NatTable(N.NatConfig(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), LPORT, port_min=2000, port_max=2003))
    t6 = table6(port_min=2000, port_max=2003)
    t4.peer, t6.peer = t6, t4
    ports = set()
    for i in range(2):
        p4 = bytearray(raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000 + i, dport=80, flags="S")))
        assert run(t4, p4) == N.UP
        ports.add(IP(bytes(p4))[TCP].sport)
        ports.add(open_flow(t6, sport=3000 + i))
    assert ports == {2000, 2001, 2002, 2003}


def test_segment_without_session_gets_an_ipv6_rst():
    """An app's ACK of no session is answered with an IPv6 RST from the original destination."""
    t = table6()
    p = seg(flags="A")
    assert run(t, p) == N.REPLY
    rst = IPv6(t.reply)
    assert (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == (DEST, APP, 443, 40000)
    assert rst[TCP].flags.R
    assert_valid(t.reply)


def test_udp_ipv4_and_extension_headers_go_to_policy():
    """Non-TCP IPv6, TCP behind extension headers and IPv4 are the policy's, with parsed info."""
    t = table6()
    for pkt in (
        IPv6(src=APP, dst=DEST) / UDP(sport=5, dport=443) / b"q",
        IPv6(src=APP, dst=DEST) / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2, flags="S"),
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S"),
    ):
        assert run(t, bytearray(raw(pkt))) == N.POLICY
    assert t.counters()["to_policy"] == 3 and len(t) == 0


@given(st.binary(min_size=0, max_size=120), st.booleans())
def test_random_bytes_never_raise(data, partial):
    """Garbage in gives a verdict, never an exception."""
    t = table6()
    assert run(t, bytearray(b"\x60" + data), partial=partial) in (N.DROP, N.UP, N.DOWN, N.REPLY, N.POLICY)
