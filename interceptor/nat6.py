"""The system stack's NAT for IPv6 TCP: ``nat.NatTable`` with IPv6 offsets.

Same sessions, port allocation, expiry and counters as the IPv4 table (it is a
subclass); only where the bytes sit differs. With no extension headers the
rewritten fields, source and destination address and the two ports, are the
contiguous bytes 8..44 of the packet: one 36-byte key finds the session either
way and one slice assignment rewrites it. IPv6 has no header checksum, so a packet
costs one adjustment of the TCP checksum at byte 56.

The IPv6 table shares the listener's port space with the IPv4 one (``peer``), so a
NAT port names one flow whatever its family and ``lookup(port)`` stays unambiguous.
"""

from __future__ import annotations

import struct

from atlantic.interceptor.nat import NatTable
from atlantic.interceptor.packet import PROTO_TCP, PacketInfo

# version/traffic class, payload length, next header, the 36-byte key (addresses +
# ports), data offset, TCP flags, TCP checksum.
_V6_TCP = struct.Struct("!B3xHBx36s8xBBxxH")
_CK = struct.Struct("!H")
_CK_OFF = 56  # 40 (IPv6 header) + 16 (TCP checksum)


class NatTable6(NatTable):
    """IPv6 TCP sessions keyed by wire bytes 8..44; see ``nat.NatTable``."""

    def translate(self, buf: bytearray, off: int, end: int, now: float, partial: bool) -> int:
        """Rewrite the IPv6 packet ``buf[off:end]`` in place and return a verdict (never raises)."""
        if end - off >= 60:
            v, plen, nh, key, doff, flags, l4ck = _V6_TCP.unpack_from(buf, off)
            if v >> 4 == 6 and nh == 6 and not flags & 7 and doff >= 0x50 and 60 <= 40 + plen <= end - off:
                e = self._flows.get(key)
                if e is not None:
                    new, addr_adj, l4_adj, s, verdict = e
                    buf[off + 8 : off + 44] = new
                    # A partial sum covers only the pseudo header: addresses, not ports.
                    _CK.pack_into(
                        buf, off + _CK_OFF, (l4ck + addr_adj - 1) % 0xFFFF + 1 if partial else (l4ck - l4_adj) % 0xFFFF
                    )
                    s.last = now
                    return verdict
        return self._slow(buf, off, end, now, partial)

    def _is_plain_tcp(self, info: PacketInfo) -> bool:
        # TCP behind extension headers (no app sends those) goes to the policy.
        return info.version == 6 and info.protocol == PROTO_TCP and info.header_len == 40

    def _key(self, buf: bytearray, off: int, info: PacketInfo) -> bytes:
        return bytes(buf[off + 8 : off + 44])

    def _rewrite(self, buf: bytearray, off: int, header_len: int, new: bytes, ip_adj: int, l4_adj: int,
                 partial: bool) -> None:
        # No IP header checksum in IPv6: only the TCP one moves.
        buf[off + 8 : off + 44] = new
        c = (buf[off + _CK_OFF] << 8) | buf[off + _CK_OFF + 1]
        c = (c + ip_adj - 1) % 0xFFFF + 1 if partial else (c - l4_adj) % 0xFFFF
        buf[off + _CK_OFF : off + _CK_OFF + 2] = c.to_bytes(2, "big")
