"""Policies for packets the TCP NAT does not handle (UDP, ICMP, IPv6, ...).

A policy is ``policy(packet, info) -> bytes | None``: given the IP packet (a
memoryview valid only during the call) and its parsed ``PacketInfo``, it returns
an IP packet to write back into the TUN (an ICMP error, later a DNS answer) or
None to drop. Pure functions; the stack counts what they decide.
"""

from __future__ import annotations

from collections.abc import Callable

from atlantic.interceptor.packet import PROTO_UDP, PacketInfo, build_icmp_unreachable

Policy = Callable[[memoryview, PacketInfo], "bytes | None"]


def drop_all(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Drop every packet (the default: UDP is not carried yet)."""
    return None


def reject_quic(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Refuse UDP 443 (QUIC) with ICMP port unreachable so browsers fall back to TCP; drop the rest."""
    if info.version == 4 and info.protocol == PROTO_UDP and info.dport == 443:
        return build_icmp_unreachable(packet, 0, info)
    return None
