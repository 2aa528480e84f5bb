"""The NAT table: rewriting both ways, checksums, sessions, ports, expiry, bad input."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, IPOption_NOP, IPv6, raw

from atlantic.interceptor import checksum as ck
from atlantic.interceptor import nat as N
from atlantic.interceptor.packet import VNET_HDR_LEN

INET = bytes([198, 18, 0, 1])
CLIENT = bytes([198, 18, 0, 2])
LPORT = 7890
APP = "198.18.0.1"
DEST = "10.123.0.9"


def table(**kw) -> N.NatTable:
    return N.NatTable(N.NatConfig(INET, CLIENT, LPORT, **kw))


def seg(src=APP, dst=DEST, sport=40000, dport=80, flags="A", payload=b"", **ip) -> bytearray:
    return bytearray(raw(IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags) / payload))


def run(t: N.NatTable, pkt: bytearray, now: float = 0.0, partial: bool = False) -> int:
    return t.translate(pkt, 0, len(pkt), now, partial)


def assert_valid(pkt: bytes) -> None:
    """IP and TCP checksums equal a full recomputation, bit for bit."""
    ihl = (pkt[0] & 15) * 4
    hdr = bytearray(pkt[:ihl])
    hdr[10:12] = b"\0\0"
    assert struct.unpack_from("!H", pkt, 10)[0] == ck.checksum(hdr)
    l4 = bytearray(pkt[ihl:])
    l4[16:18] = b"\0\0"
    assert struct.unpack_from("!H", pkt, ihl + 16)[0] == ck.l4_checksum(pkt[12:16], pkt[16:20], 6, l4)


def open_flow(t: N.NatTable, sport=40000, dst=DEST, dport=80, now=0.0) -> int:
    """SYN from the app; returns the NAT port."""
    p = seg(sport=sport, dst=dst, dport=dport, flags="S")
    assert run(t, p, now) == N.UP
    return IP(bytes(p))[TCP].sport


def test_syn_is_rewritten_to_the_listener():
    """A SYN becomes virtual-client:n -> listener with valid checksums, and lookup finds it."""
    t = table()
    p = seg(flags="S")
    assert run(t, p) == N.UP
    out = IP(bytes(p))
    assert (out.src, out.dst, out[TCP].dport) == ("198.18.0.2", "198.18.0.1", LPORT)
    assert_valid(bytes(p))
    assert t.lookup(out[TCP].sport) == ((APP, 40000), (DEST, 80))
    assert t.counters()["sessions_open"] == 1


def test_listener_reply_is_rewritten_to_the_app():
    """The listener's SYN-ACK goes back as DEST:80 -> APP:40000 with valid checksums."""
    t = table()
    n = open_flow(t)
    p = seg(src="198.18.0.1", dst="198.18.0.2", sport=LPORT, dport=n, flags="SA", payload=b"hi")
    assert run(t, p) == N.DOWN
    out = IP(bytes(p))
    assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == (DEST, APP, 80, 40000)
    assert_valid(bytes(p))


addr = st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: ".".join(map(str, t)))


@given(addr, addr, st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=64), st.integers(0, 65535))
def test_round_trip_checksums_equal_recompute(src, dst, sport, dport, payload, ident):
    """Data both ways after a SYN: incremental checksums equal full recomputation; up then down restores."""
    if src in ("198.18.0.2",) or dst in ("198.18.0.1", "198.18.0.2"):
        return
    t = table()
    assert run(t, seg(src, dst, sport, dport, "S")) == N.UP
    p = seg(src, dst, sport, dport, "PA", payload, id=ident)
    assert run(t, p) == N.UP
    assert_valid(bytes(p))
    # The listener answers with the mirrored segment; it must come back as the original's mirror.
    out = IP(bytes(p))
    back = seg(out.dst, out.src, out[TCP].dport, out[TCP].sport, "PA", payload, id=ident)
    assert run(t, back) == N.DOWN
    assert_valid(bytes(back))
    assert bytes(back) == bytes(seg(dst, src, dport, sport, "PA", payload, id=ident))


@given(st.binary(max_size=200), st.booleans())
def test_partial_checksum_is_updated_as_pseudo_header_sum(payload, up):
    """With NEEDS_CSUM the field holds the pseudo-header sum, and stays the new one after the rewrite."""
    t = table()
    n = open_flow(t)
    if up:
        p = seg(payload=payload)
    else:
        p = seg("198.18.0.1", "198.18.0.2", LPORT, n, payload=payload)
    seg_len = len(p) - 20
    p[36:38] = ck.pseudo_header_sum(bytes(p[12:16]), bytes(p[16:20]), 6, seg_len).to_bytes(2, "big")
    assert run(t, p, partial=True) == (N.UP if up else N.DOWN)
    assert struct.unpack_from("!H", p, 36)[0] == ck.pseudo_header_sum(bytes(p[12:16]), bytes(p[16:20]), 6, seg_len)


def test_offset_for_vnet_header_and_ip_options():
    """A packet behind a virtio header, and one with IP options, are rewritten correctly."""
    t = table()
    p = bytearray(VNET_HDR_LEN) + seg(flags="S")
    assert t.translate(p, VNET_HDR_LEN, len(p), 0.0, False) == N.UP
    assert p[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
    assert_valid(bytes(p[VNET_HDR_LEN:]))
    q = bytearray(raw(IP(src=APP, dst=DEST, options=[IPOption_NOP()] * 4) / TCP(sport=40000, dport=80, flags="A")))
    assert run(t, q) == N.UP
    assert_valid(bytes(q))
    assert IP(bytes(q))[TCP].dport == LPORT


def test_segment_without_session_gets_rst_and_is_counted():
    """An app's non-SYN segment of no session is answered with a RST from the destination."""
    t = table()
    assert run(t, seg(flags="A")) == N.REPLY
    rst = IP(t.reply)
    assert (rst.src, rst.dst, rst[TCP].flags) == (DEST, APP, "R")
    assert t.counters()["dropped_no_session"] == 1
    assert run(t, seg(flags="R")) == N.DROP  # never answer a RST
    assert run(t, seg(flags="S", src="198.18.0.2")) == N.DROP  # would loop


def test_listener_segment_of_unknown_port_is_dropped():
    """A listener segment for a NAT port with no session is dropped silently."""
    t = table()
    assert run(t, seg("198.18.0.1", "198.18.0.2", LPORT, 5555, "A")) == N.DROP
    assert t.counters()["dropped_no_session"] == 1


def test_non_tcp_goes_to_policy():
    """UDP, ICMP and IPv6 are handed to the policy with their parsed info."""
    t = table()
    for pkt in (IP(dst=DEST) / UDP(dport=443), IP(dst=DEST) / ICMP(), IPv6() / TCP()):
        b = bytearray(raw(pkt))
        assert run(t, b) == N.POLICY
        assert t.info.protocol in (17, 1, 6)
    assert t.counters()["to_policy"] == 3


def test_fragments_and_malformed_are_dropped_and_counted():
    """Fragments and malformed packets are dropped, each kind counted."""
    t = table()
    assert run(t, seg(flags="S", frag=5)) == N.DROP
    assert run(t, bytearray(b"\x45\x00\x00")) == N.DROP
    assert run(t, bytearray(raw(IP() / TCP(dataofs=2)))) == N.DROP
    c = t.counters()
    assert (c["dropped_fragment"], c["dropped_malformed"]) == (1, 2)


@given(st.binary(max_size=100), st.booleans())
def test_random_bytes_never_raise(data, partial):
    """Random bytes through translate yield a verdict, never an exception."""
    t = table()
    assert run(t, bytearray(data), partial=partial) in (N.DROP, N.UP, N.DOWN, N.REPLY, N.POLICY)


@given(st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=6), st.sampled_from(["S", "A", "PA", "F"]))
def test_mutated_segments_never_raise(flips, flags):
    """Valid segments with corrupted bytes (an established session exists) never raise."""
    t = table()
    open_flow(t)
    p = seg(flags=flags, payload=b"0123456789abcdef0123")
    for pos, val in flips:
        p[pos] = val
    assert run(t, p) in (N.DROP, N.UP, N.DOWN, N.REPLY, N.POLICY)


def test_ports_are_round_robin_and_never_reused_while_open():
    """Ports are handed out in turn, skip ports in use, and run out cleanly when full."""
    t = table(port_min=2000, port_max=2003)
    ports = [open_flow(t, sport=40000 + i) for i in range(4)]
    assert ports == [2000, 2001, 2002, 2003]
    assert run(t, seg(sport=40010, flags="S")) == N.REPLY  # full: refused with RST
    assert t.counters()["dropped_table_full"] == 1
    t._remove(t._ports[2001])
    assert open_flow(t, sport=40011) == 2001


def test_max_sessions_bounds_the_table():
    """The table never holds more than max_sessions."""
    t = table(max_sessions=3)
    for i in range(5):
        run(t, seg(sport=30000 + i, flags="S"))
    assert len(t) == 3


def handshake(t, n, now=0.0):
    run(t, seg("198.18.0.1", "198.18.0.2", LPORT, n, "SA"), now)


def test_expiry_of_established_idle_and_unanswered_syn():
    """Established sessions live established_timeout idle; unanswered SYNs syn_timeout."""
    t = table(established_timeout=100, syn_timeout=5)
    n = open_flow(t, sport=1)
    handshake(t, n)
    m = open_flow(t, sport=2)
    assert t.expire(4.0) == 0
    assert t.expire(6.0) == 1 and t.lookup(m) is None
    run(t, seg(sport=1), 50.0)  # traffic refreshes it
    assert t.expire(149.0) == 0
    assert t.expire(151.0) == 1 and t.lookup(n) is None


def test_fin_both_ways_or_rst_shortens_timeout():
    """After FIN from both sides, or a RST, the session expires after closing_timeout."""
    t = table(closing_timeout=10)
    a = open_flow(t, sport=1)
    handshake(t, a)
    run(t, seg(sport=1, flags="FA"), 1.0)
    assert t.expire(20.0) == 0  # only one FIN
    run(t, seg("198.18.0.1", "198.18.0.2", LPORT, a, "FA"), 21.0)
    assert t.expire(30.0) == 0 and t.expire(31.5) == 1
    b = open_flow(t, sport=2)
    handshake(t, b)
    run(t, seg("198.18.0.1", "198.18.0.2", LPORT, b, "R"), 40.0)
    assert t.expire(51.0) == 1


def test_new_syn_on_closing_session_opens_a_new_one():
    """An app reusing its port after a reset gets a fresh session and NAT port."""
    t = table()
    a = open_flow(t)
    run(t, seg(flags="R"))
    b = open_flow(t)
    assert a != b and t.lookup(a) is None and t.lookup(b) == ((APP, 40000), (DEST, 80))


def test_lookup_from_another_thread_while_translating():
    """lookup() in a second thread during translation sees whole sessions or none."""
    t = table()
    errors = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for port in range(1024, 1300):
                r = t.lookup(port)
                if r is not None and r[1] != (DEST, 80):
                    errors.append(r)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(250):
            open_flow(t, sport=20000 + i)
            t.expire(1e9 if i % 50 == 0 else 0.0)
    finally:
        stop.set()
        th.join(5)
    assert not errors


def test_config_rejects_bad_addresses():
    """Misconfiguration fails fast with a clear message."""
    with pytest.raises(ValueError, match="differ"):
        N.NatConfig(INET, INET, LPORT)
    with pytest.raises(ValueError, match="IPv4"):
        N.NatConfig(b"\0" * 16, CLIENT, LPORT)


def test_stack_rejects_virtual_client_outside_the_prefix():
    """SystemStack refuses a virtual client that is no host address of the TUN prefix."""
    from atlantic.interceptor.stack import SystemStack

    for bad in ("198.18.0.3", "198.18.1.2"):
        with pytest.raises(ValueError, match="host address inside 198.18.0.0/30"):
            SystemStack(virtual_client_addr=bad)


class _CountingTable(N.NatTable):
    """A table that counts its full scans (expire calls)."""

    scans = 0

    def expire(self, now: float) -> int:
        self.scans += 1
        return super().expire(now)


def test_syn_flood_against_a_full_table_scans_it_at_most_once_a_second():
    """With the table full of live sessions, refused SYNs cost no scan each: one per interval."""
    t = _CountingTable(N.NatConfig(INET, CLIENT, LPORT, port_min=2000, port_max=2003))
    for i in range(4):
        open_flow(t, sport=40000 + i)
    verdicts = [run(t, seg(sport=41000 + i, flags="S"), now=10.0) for i in range(200)]
    assert verdicts == [N.REPLY] * 200
    assert t.scans == 1 and t.counters()["dropped_table_full"] == 200
    assert run(t, seg(sport=42000, flags="S"), now=10.0 + N.FULL_SCAN_INTERVAL_S) == N.REPLY
    assert t.scans == 2


def test_full_table_frees_idle_sessions_for_a_new_syn():
    """Once sessions have expired, the next SYN after the interval gets a port."""
    t = table(port_min=2000, port_max=2001, syn_timeout=5)
    open_flow(t, sport=1)
    open_flow(t, sport=2)
    assert run(t, seg(sport=3, flags="S"), now=1.0) == N.REPLY
    assert open_flow(t, sport=4, now=100.0) in (2000, 2001)


def test_a_family_finds_the_shared_port_space_full_without_scanning_it():
    """The IPv6 table refuses at once when the IPv4 table holds every shared port."""
    from atlantic.interceptor.nat6 import NatTable6
    t4 = table(port_min=2000, port_max=2003)
    t6 = NatTable6(N.NatConfig(INET, CLIENT, LPORT, port_min=2000, port_max=2003))
    t4.peer, t6.peer = t6, t4
    for i in range(4):
        open_flow(t4, sport=40000 + i)
    cursor = t6._cursor
    assert t6._alloc_port() is None
    assert t6._cursor == cursor  # no walk over the range
