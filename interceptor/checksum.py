"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

Pure functions over bytes-like objects. The ones' complement sum of 16-bit words
equals the big-endian integer value of the data modulo 0xffff (because 2**16 is 1
modulo 0xffff), so a full sum is one C-level ``int.from_bytes`` instead of a Python
loop over words.

Two kinds of checksum fields are handled:

* a *complete* checksum ``HC = ~sum`` (what travels on the wire), and
* a *partial* sum: with checksum offload (virtio ``NEEDS_CSUM``) the TCP/UDP field
  holds the folded, non-complemented pseudo-header sum; the device finishes it.

A rewrite of fields whose 16-bit words sum to ``old`` into words summing to ``new``
changes a complete checksum by ``-(new - old)`` and a partial sum by ``+(new - old)``
in ones' complement arithmetic; ``adjustment(old_bytes, new_bytes)`` precomputes that
difference once per NAT session. A partial sum covers only the pseudo header, so
only the address part of a rewrite adjusts it: the device sums the ports itself.
"""

from __future__ import annotations

MOD = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of *data* as 16-bit big-endian words, folded to 16 bits.

    An odd trailing byte is padded with a zero byte. Returns a value in
    ``[1, 0xffff]`` for data that is not all zero, ``0`` for all-zero data, the
    same representation as the classic fold loop.
    """
    n = len(data)
    value = int.from_bytes(data, "big")
    if n & 1:
        value <<= 8
    if value == 0:
        return 0
    r = value % MOD
    return r if r else MOD


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Complete Internet checksum of *data* (with its checksum field zeroed)."""
    return ~ones_sum(data) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Folded sum of the IPv4 or IPv6 pseudo header (addresses, protocol, L4 length)."""
    if len(src) == 4:
        tail = bytes((0, protocol)) + length.to_bytes(2, "big")
    else:
        tail = length.to_bytes(4, "big") + bytes((0, 0, 0, protocol))
    return ones_sum(src + dst + tail)


def l4_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview) -> int:
    """Complete TCP/UDP/ICMPv6 checksum of *segment* (its checksum field zeroed)."""
    total = pseudo_header_sum(src, dst, protocol, len(segment)) + ones_sum(segment)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def adjustment(old: bytes | bytearray | memoryview, new: bytes | bytearray | memoryview) -> int:
    """Ones' complement difference ``sum(new) - sum(old)`` modulo 0xffff.

    *old* and *new* are the replaced and replacing 16-bit-aligned field bytes
    (same even length). Feed the result to ``update_complete``/``update_partial``.
    """
    return (int.from_bytes(new, "big") - int.from_bytes(old, "big")) % MOD


def update_complete(check: int, adj: int) -> int:
    """RFC 1624 eqn. 3 for a complete checksum field; result in ``[0, 0xfffe]``.

    That is the representation a full recomputation yields for non-zero data, so
    an incremental update and a recomputation agree bit for bit.
    """
    return (check - adj) % MOD


def update_partial(psum: int, adj: int) -> int:
    """Update a partial (non-complemented) pseudo-header sum; result in ``[1, 0xffff]``."""
    return (psum + adj - 1) % MOD + 1
