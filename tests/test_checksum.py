"""Internet checksums: full sums, and RFC 1624 incremental updates that match them."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, raw

from atlantic.interceptor import checksum as ck


def naive_sum(data: bytes) -> int:
    """The textbook RFC 1071 fold loop, the reference for the fast sum."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (w,) in struct.iter_unpack("!H", data):
        total += w
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=300))
def test_ones_sum_matches_fold_loop(data):
    """The big-int modulo sum equals the classic fold loop, representation included."""
    assert ck.ones_sum(data) == naive_sum(data)


def test_checksum_matches_scapy_ip_header():
    """The full checksum of an IPv4 header equals the one scapy computes."""
    pkt = raw(IP(src="10.1.2.3", dst="192.0.2.77", id=4321, ttl=17) / TCP())
    hdr = bytearray(pkt[:20])
    expected = struct.unpack_from("!H", hdr, 10)[0]
    hdr[10:12] = b"\0\0"
    assert ck.checksum(hdr) == expected


@given(st.binary(min_size=0, max_size=200), st.integers(0, 65535), st.integers(0, 65535))
def test_l4_checksum_matches_scapy(payload, sport, dport):
    """The TCP checksum over the pseudo header equals scapy's."""
    pkt = bytearray(raw(IP(src="198.18.0.1", dst="10.123.0.9") / TCP(sport=sport, dport=dport) / payload))
    expected = struct.unpack_from("!H", pkt, 36)[0]
    pkt[36:38] = b"\0\0"
    assert ck.l4_checksum(bytes(pkt[12:16]), bytes(pkt[16:20]), 6, pkt[20:]) == expected


@given(st.binary(min_size=2, max_size=120).filter(lambda b: any(b)), st.data())
def test_incremental_complete_update_equals_recompute(data, draw):
    """Rewriting aligned words and updating the checksum equals recomputing it, bit for bit."""
    data = bytearray(data + (b"\0" if len(data) & 1 else b""))
    words = len(data) // 2
    start = draw.draw(st.integers(0, words - 1)) * 2
    length = draw.draw(st.integers(1, words - start // 2)) * 2
    new = draw.draw(st.binary(min_size=length, max_size=length))
    before = ck.checksum(data)
    old = bytes(data[start : start + length])
    data[start : start + length] = new
    if any(data):
        assert ck.update_complete(before, ck.adjustment(old, new)) == ck.checksum(data)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.binary(min_size=4, max_size=4), st.integers(20, 65000))
def test_incremental_partial_update_equals_new_pseudo_sum(src, dst, nsrc, ndst, length):
    """Updating a partial pseudo-header sum for new addresses gives the new pseudo sum."""
    psum = ck.pseudo_header_sum(src, dst, 6, length)
    adj = ck.adjustment(src + dst, nsrc + ndst)
    assert ck.update_partial(psum, adj) == ck.pseudo_header_sum(nsrc, ndst, 6, length)
