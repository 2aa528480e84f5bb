"""IP/TCP/UDP packet parsing and building: pure functions over bytes-like objects.

The NAT's hot path (``nat.NatTable.translate``) reads raw offsets itself; this module
is the careful, complete parser used on the slow path, by policies and by tests,
and the builder of the few packets the stack sends on its own (TCP RST, ICMP
destination unreachable). Nothing here allocates per byte or reads a clock.

Offsets used by the hot path (IPv4, no options): source, destination address and
the two ports are the contiguous bytes 12..24, the IP checksum is at 10, the TCP
checksum at 36, TCP flags at 33.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from atlantic.interceptor.checksum import checksum, l4_checksum

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# virtio_net_hdr (10 bytes) that IFF_VNET_HDR puts in front of every packet.
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 0x01
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
VNET_HDR_STRUCT = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_PLAIN = bytes(VNET_HDR_LEN)  # "checksums complete, no GSO"

_IPV6_EXT = frozenset({0, 43, 44, 60})  # hop-by-hop, routing, fragment, dest options


class MalformedPacket(ValueError):
    """The bytes are not a packet the stack can handle (truncated, bad header, ...)."""


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """Parsed view of one IP packet; offsets are relative to the packet's first byte."""

    version: int
    header_len: int  # IP header length incl. options / IPv6 extension headers
    total_len: int  # as claimed by the header and checked against the buffer
    protocol: int  # upper-layer protocol (after IPv6 extension headers)
    src: bytes  # 4 or 16 bytes
    dst: bytes
    is_fragment: bool
    sport: int = 0  # TCP/UDP only
    dport: int = 0
    tcp_flags: int = 0
    payload_len: int = 0  # TCP/UDP payload bytes

    @property
    def l4_offset(self) -> int:
        """Offset of the transport header."""
        return self.header_len


def parse(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> PacketInfo:
    """Parse the IP packet in ``buf[off:end]``; raise ``MalformedPacket`` with a reason.

    Fragments are returned with ``is_fragment`` set and without ports (only the
    first fragment carries them, and the stack drops fragments anyway).
    """
    if end is None:
        end = len(buf)
    avail = end - off
    if avail < 1:
        raise MalformedPacket("empty")
    version = buf[off] >> 4
    if version == 4:
        return _parse_v4(buf, off, avail)
    if version == 6:
        return _parse_v6(buf, off, avail)
    raise MalformedPacket(f"IP version {version}")


def _parse_v4(buf, off: int, avail: int) -> PacketInfo:
    if avail < 20:
        raise MalformedPacket("truncated IPv4 header")
    ihl = (buf[off] & 0x0F) * 4
    if ihl < 20:
        raise MalformedPacket("IPv4 IHL below 5")
    total = (buf[off + 2] << 8) | buf[off + 3]
    if total < ihl or total > avail:
        raise MalformedPacket("IPv4 total length inconsistent")
    frag = ((buf[off + 6] << 8) | buf[off + 7]) & 0x3FFF  # MF flag + offset
    proto = buf[off + 9]
    src = bytes(buf[off + 12 : off + 16])
    dst = bytes(buf[off + 16 : off + 20])
    if frag:
        return PacketInfo(4, ihl, total, proto, src, dst, True)
    return _parse_l4(buf, off, 4, ihl, total, proto, src, dst)


def _parse_v6(buf, off: int, avail: int) -> PacketInfo:
    if avail < 40:
        raise MalformedPacket("truncated IPv6 header")
    total = 40 + ((buf[off + 4] << 8) | buf[off + 5])
    if total > avail:
        raise MalformedPacket("IPv6 payload length inconsistent")
    src = bytes(buf[off + 8 : off + 24])
    dst = bytes(buf[off + 24 : off + 40])
    nxt = buf[off + 6]
    hlen = 40
    for _ in range(8):  # bounded walk over extension headers
        if nxt not in _IPV6_EXT:
            break
        if hlen + 8 > total:
            raise MalformedPacket("truncated IPv6 extension header")
        if nxt == 44:
            return PacketInfo(6, hlen, total, buf[off + hlen], src, dst, True)
        nxt, hlen = buf[off + hlen], hlen + (buf[off + hlen + 1] + 1) * 8
    else:
        raise MalformedPacket("too many IPv6 extension headers")
    if hlen > total:
        raise MalformedPacket("truncated IPv6 extension header")
    return _parse_l4(buf, off, 6, hlen, total, nxt, src, dst)


def _parse_l4(buf, off, version, hlen, total, proto, src, dst) -> PacketInfo:
    l4 = off + hlen
    seg = total - hlen
    if proto == PROTO_TCP:
        if seg < 20:
            raise MalformedPacket("truncated TCP header")
        doff = (buf[l4 + 12] >> 4) * 4
        if doff < 20 or doff > seg:
            raise MalformedPacket("bad TCP data offset")
        sport, dport = struct.unpack_from("!HH", buf, l4)
        return PacketInfo(version, hlen, total, proto, src, dst, False, sport, dport, buf[l4 + 13], seg - doff)
    if proto == PROTO_UDP:
        if seg < 8:
            raise MalformedPacket("truncated UDP header")
        sport, dport, ulen = struct.unpack_from("!HHH", buf, l4)
        if ulen < 8 or ulen > seg:
            raise MalformedPacket("bad UDP length")
        return PacketInfo(version, hlen, total, proto, src, dst, False, sport, dport, 0, ulen - 8)
    return PacketInfo(version, hlen, total, proto, src, dst, False)


def format_addr(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address (IPv6 compressed as ``ipaddress`` does)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def build_ipv4(src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 packet (no options, DF set) around *payload*, header checksum filled in."""
    hdr = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, protocol, 0, src, dst)
    )
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + payload


def build_ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    """An IPv6 packet (no extension headers) around *payload*."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, src, dst) + payload


def build_ip(src: bytes, dst: bytes, protocol: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet, by the length of the addresses."""
    if len(src) == 4:
        return build_ipv4(src, dst, protocol, payload)
    return build_ipv6(src, dst, protocol, payload)


def build_tcp(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int = 0
) -> bytes:
    """A bare TCP segment (no options, no payload) in IPv4 or IPv6, with valid checksums."""
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0))
    struct.pack_into("!H", seg, 16, l4_checksum(src, dst, PROTO_TCP, seg))
    return build_ip(src, dst, PROTO_TCP, bytes(seg))


def build_rst_reply(buf: bytes | bytearray | memoryview, off: int, info: PacketInfo) -> bytes:
    """The RST a TCP endpoint answers *info* with (RFC 9293 3.10.7.1), IPv4 or IPv6.

    Sent to an application whose segment belongs to no NAT session, so that it
    fails at once instead of retransmitting into the void.
    """
    l4 = off + info.header_len
    seq_in, ack_in = struct.unpack_from("!II", buf, l4 + 4)
    if info.tcp_flags & TCP_ACK:
        return build_tcp(info.dst, info.src, info.dport, info.sport, ack_in, 0, TCP_RST)
    seglen = info.payload_len + (1 if info.tcp_flags & TCP_SYN else 0) + (1 if info.tcp_flags & TCP_FIN else 0)
    return build_tcp(info.dst, info.src, info.dport, info.sport, 0, (seq_in + seglen) & 0xFFFFFFFF, TCP_RST | TCP_ACK)


def build_icmp_unreachable(buf: bytes | bytearray | memoryview, off: int, info: PacketInfo, code: int = 3) -> bytes:
    """ICMPv4 destination unreachable (default code 3: port unreachable) for *info*.

    Quotes the offending IP header and the first 8 payload bytes, as RFC 792 asks;
    this is how UDP 443 (QUIC) gets refused so browsers fall back to TCP at once.
    """
    quote = bytes(buf[off : off + min(info.total_len, info.header_len + 8)])
    icmp = bytearray(struct.pack("!BBHI", 3, code, 0, 0) + quote)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    return build_ipv4(info.dst, info.src, PROTO_ICMP, bytes(icmp))


# An ICMPv6 error must fit the IPv6 minimum MTU (RFC 4443 2.4 (c)): 1280 - 40 - 8.
_ICMPV6_QUOTE_MAX = 1232


def build_icmpv6_unreachable(
    buf: bytes | bytearray | memoryview, off: int, info: PacketInfo, code: int = 4
) -> bytes:
    """ICMPv6 destination unreachable (default code 4: port unreachable) for *info*.

    Quotes as much of the offending packet as fits the minimum MTU (RFC 4443), sent
    from the address the application wrote to, so its socket sees the error.
    """
    quote = bytes(buf[off : off + min(info.total_len, _ICMPV6_QUOTE_MAX)])
    icmp = bytearray(struct.pack("!BBHI", 1, code, 0, 0) + quote)
    struct.pack_into("!H", icmp, 2, l4_checksum(info.dst, info.src, PROTO_ICMPV6, icmp))
    return build_ipv6(info.dst, info.src, PROTO_ICMPV6, bytes(icmp))


def build_port_unreachable(buf: bytes | bytearray | memoryview, off: int, info: PacketInfo) -> bytes:
    """ICMP or ICMPv6 port unreachable for *info*, by its IP version."""
    if info.version == 4:
        return build_icmp_unreachable(buf, off, info, 3)
    return build_icmpv6_unreachable(buf, off, info, 4)
