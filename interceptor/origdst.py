"""Where a kernel-redirected TCP flow was going: conntrack's original destination.

With ``system/redirect.py`` in place the kernel rewrites a flow's destination to the
daemon's loopback listener; ``getsockopt(SO_ORIGINAL_DST)`` on the accepted socket
returns the address the application connected to (``IP6T_SO_ORIGINAL_DST`` for IPv6,
the same number at ``SOL_IPV6``, i.e. ``IPPROTO_IPV6``). A connection made to the listener itself (a local
user connecting straight to it, not redirected) has its own address as the original
one and is refused: carrying it would loop.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>; IP6T_SO_ORIGINAL_DST has the same value
SOCKADDR_IN = 16
SOCKADDR_IN6 = 28


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """``(host, port)`` from a raw ``sockaddr_in`` or ``sockaddr_in6`` (pure).

    Raises ValueError for anything else (a short buffer, another family).
    """
    if len(raw) < 4:
        raise ValueError(f"sockaddr too short ({len(raw)} bytes)")
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raise ValueError(f"not an IPv4 or IPv6 sockaddr (family {family}, {len(raw)} bytes)")


def original_destination(sock: socket.socket, listener: tuple[str, int]) -> tuple[str, int] | None:
    """Where the application behind an accepted, redirected ``sock`` was going, or None when
    the kernel has no record of a redirect: no conntrack entry, or a connection made to the
    ``listener`` address itself (host, port), which carrying would loop."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, SOCKADDR_IN6)
        else:
            raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, SOCKADDR_IN)
        dst = parse_sockaddr(raw)
    except (OSError, ValueError):
        return None
    return None if dst == tuple(listener) else dst
