"""Policies for packets the TCP NAT does not handle (UDP, ICMP, DNS, ...).

A handler is ``handler(packet, info) -> bytes | None``: given the IP packet (a
memoryview valid only during the call) and its parsed ``PacketInfo``, it returns

* ``None``: not mine, ask the next handler;
* ``DROP`` (``b""``): mine, write nothing;
* other bytes: mine, write this IP packet back into the TUN (an ICMP error, a DNS answer).

``compose(...)`` chains handlers: the first that returns non-None wins, and the chain
counts each handler's decisions under its name (and what nobody claimed as
``other_dropped``), for status. A chain is itself a policy for ``SystemStack``, which
writes non-empty results and drops the rest. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from atlantic.interceptor.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    PacketInfo,
    build_port_unreachable,
)

Policy = Callable[[memoryview, PacketInfo], "bytes | None"]

DROP = b""  # a handler's "mine, and dropped"
QUIC_PORT = 443
DNS_PORT = 53
UDP_POLICIES = ("drop", "reject")

def drop_all(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Drop every packet (the stack's default when no policy is configured)."""
    return None


def reject_quic(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Refuse UDP 443 (QUIC, IPv4 and IPv6) with ICMP port unreachable so browsers fall back to TCP."""
    if info.protocol == PROTO_UDP and info.dport == QUIC_PORT:
        return build_port_unreachable(packet, 0, info)
    return None


def reject_udp(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Refuse any UDP datagram with ICMP port unreachable (the app fails at once)."""
    if info.protocol == PROTO_UDP:
        return build_port_unreachable(packet, 0, info)
    return None


def drop_udp(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Silently drop any UDP datagram (counted by the chain)."""
    return DROP if info.protocol == PROTO_UDP else None


def drop_icmp(packet: memoryview, info: PacketInfo) -> bytes | None:
    """Drop ICMP and ICMPv6 (echo to tunnelled addresses; the kernel's own RS/MLD on the TUN)."""
    return DROP if info.protocol in (PROTO_ICMP, PROTO_ICMPV6) else None


# Counter names of the handlers above; other handlers count under their __name__.
_NAMES = {
    reject_quic: "quic_rejected",
    reject_udp: "udp_rejected",
    drop_udp: "udp_dropped",
    drop_icmp: "icmp_dropped",
}


class PolicyChain:
    """Handlers asked in order; the first non-None answer wins. Counts per handler.

    Only the packet thread calls it; ``counters()`` from another thread reads a
    list of ints (a consistent-enough snapshot under the GIL).
    """

    __slots__ = ("_handlers", "_names", "_counts", "_other")

    def __init__(self, handlers: tuple[tuple[str, Policy], ...]) -> None:
        self._names = tuple(name for name, _ in handlers)
        if len(set(self._names)) != len(self._names):
            raise ValueError(f"policy handler names must be unique: {self._names}")
        self._handlers = tuple(h for _, h in handlers)
        self._counts = [0] * len(handlers)
        self._other = 0

    def __call__(self, packet: memoryview, info: PacketInfo) -> bytes | None:
        """Run the chain on one packet: the reply to write, or None to drop."""
        i = 0
        for h in self._handlers:
            r = h(packet, info)
            if r is not None:
                self._counts[i] += 1
                return r or None
            i += 1
        self._other += 1
        return None

    def counters(self) -> dict[str, int]:
        """Decisions so far, by handler name, plus ``other_dropped``."""
        c = dict(zip(self._names, self._counts))
        c["other_dropped"] = self._other
        return c

    def __repr__(self) -> str:
        return f"<PolicyChain {' -> '.join(self._names)}>"


def compose(*handlers: Policy | tuple[str, Policy]) -> PolicyChain:
    """Chain *handlers* (callables or ``(name, callable)`` pairs); see the module docstring."""
    named = []
    for h in handlers:
        if isinstance(h, tuple):
            named.append(h)
        else:
            named.append((_NAMES.get(h, getattr(h, "__name__", "handler")), h))
    return PolicyChain(tuple(named))


def claim_udp_port(port: int, handler: Policy) -> Policy:
    """*handler* for UDP to *port* only, which it always claims (its None becomes ``DROP``).

    For handlers that answer later (a forwarded DNS query): the datagram is theirs
    either way and must not fall through to the rest of the chain.
    """

    def claimed(packet: memoryview, info: PacketInfo) -> bytes | None:
        if info.protocol != PROTO_UDP or info.dport != port:
            return None
        r = handler(packet, info)
        return DROP if r is None else r

    claimed.__name__ = getattr(handler, "__name__", "claimed")
    return claimed


def default_policy(udp: str = "drop", dns: Policy | None = None) -> PolicyChain:
    """The daemon's chain: DNS handler (if any), QUIC rejected, other UDP per *udp*, ICMP dropped.

    *dns* sees UDP to port 53 only and owns it (see ``claim_udp_port``); *udp* is
    ``"drop"`` (default, silent) or ``"reject"`` (ICMP port unreachable).
    """
    if udp not in UDP_POLICIES:
        raise ValueError(f"UDP policy must be one of {', '.join(UDP_POLICIES)}, got {udp!r}")
    chain: list = [("dns", claim_udp_port(DNS_PORT, dns))] if dns is not None else []
    chain += [reject_quic, drop_udp if udp == "drop" else reject_udp, drop_icmp]
    return compose(*chain)
