"""Which frames seen on a physical interface are leaks, pure: bytes in, a report out.

A frame is allowed when it is link plumbing that carries no address of ours (ARP, IPv6
neighbour discovery, and link-local multicast from the unspecified address: the MLD
reports the kernel sends while an interface comes up) or, when upstream endpoints are
given, TCP between us and an upstream (the daemon's own traffic). Anything else that
left the interface is a leak, including frames too short or too strange to read: the
classification errs towards reporting. The end-to-end leak tests capture frames with an
AF_PACKET socket and expect :func:`classify` to find none; the runtime leak detector
can use the same rules.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FrameSummary", "LeakReport", "Verdict", "classify", "summarize", "verdict"]

ETH_HEADER = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_ICMPV6 = 58
_ND_TYPES = range(133, 137)  # router and neighbour solicitation and advertisement (not redirect)
_UNSPECIFIED6 = ipaddress.IPv6Address("::")
_LINK_MULTICAST6 = ipaddress.IPv6Network("ff02::/16")


class Verdict(enum.Enum):
    """What a frame on the physical interface is."""

    LEAK = "leak"
    LINK_CONTROL = "link control"
    UPSTREAM = "upstream"


@dataclass(frozen=True, slots=True)
class FrameSummary:
    """The parts of a frame that decide its verdict (fields it lacks are None).

    ``protocol`` is the IPv4 protocol or the IPv6 next header; ``icmp_type`` is set
    for ICMPv6 only; ports for TCP only.
    """

    ethertype: int | None
    length: int
    protocol: int | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None

    def describe(self) -> str:
        """One line for an assertion message or a log, e.g. ``IPv4 proto 6 10.0.0.1 -> 10.0.0.2``."""
        if self.ethertype is None:
            return f"runt frame ({self.length} bytes)"
        if self.src is None:
            short = self.ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6)
            return f"ethertype {self.ethertype:#06x}" + (f" (truncated, {self.length} bytes)" if short else "")
        family, word = ("IPv4", "proto") if self.ethertype == ETHERTYPE_IPV4 else ("IPv6", "nh")
        return f"{family} {word} {self.protocol} {self.src} -> {self.dst}"


@dataclass(frozen=True, slots=True)
class LeakReport:
    """The frames that leaked, and how many were allowed of each kind."""

    leaks: tuple[FrameSummary, ...]
    link_control: int
    upstream: int

    @property
    def is_clean(self) -> bool:
        """True when no frame leaked."""
        return not self.leaks

    def descriptions(self) -> tuple[str, ...]:
        """One line per leaked frame, in capture order."""
        return tuple(f.describe() for f in self.leaks)


def summarize(frame: bytes) -> FrameSummary:
    """Read an Ethernet frame's ethertype, addresses, protocol and TCP ports or ICMPv6 type."""
    if len(frame) < ETH_HEADER:
        return FrameSummary(None, len(frame))
    ethertype = int.from_bytes(frame[12:14], "big")
    ip = frame[ETH_HEADER:]
    if ethertype == ETHERTYPE_IPV4 and len(ip) >= 20:
        proto, header = ip[9], (ip[0] & 0x0F) * 4
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
    elif ethertype == ETHERTYPE_IPV6 and len(ip) >= 40:
        proto, header = ip[6], 40
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
    else:
        return FrameSummary(ethertype, len(frame))
    payload = ip[header:]
    sport = dport = icmp_type = None
    if proto == PROTO_TCP and len(payload) >= 4:
        sport, dport = int.from_bytes(payload[0:2], "big"), int.from_bytes(payload[2:4], "big")
    elif proto == PROTO_ICMPV6 and ethertype == ETHERTYPE_IPV6 and payload:
        icmp_type = payload[0]
    return FrameSummary(ethertype, len(frame), proto, str(src), str(dst), sport, dport, icmp_type)


def verdict(frame: FrameSummary, upstreams: frozenset[tuple[str, int]] = frozenset()) -> Verdict:
    """Link control, the daemon's TCP to or from an upstream ``(address, port)``, or a leak."""
    if frame.ethertype == ETHERTYPE_ARP:
        return Verdict.LINK_CONTROL
    if frame.ethertype == ETHERTYPE_IPV6 and frame.src is not None:
        if frame.icmp_type in _ND_TYPES:
            return Verdict.LINK_CONTROL
        if (ipaddress.IPv6Address(frame.src) == _UNSPECIFIED6
                and ipaddress.IPv6Address(frame.dst) in _LINK_MULTICAST6):
            return Verdict.LINK_CONTROL
    if frame.protocol == PROTO_TCP and frame.sport is not None:
        if (frame.dst, frame.dport) in upstreams or (frame.src, frame.sport) in upstreams:
            return Verdict.UPSTREAM
    return Verdict.LEAK


def classify(frames: Iterable[bytes], upstreams: Iterable[tuple[str, int]] = ()) -> LeakReport:
    """Sort captured Ethernet frames into leaks and allowed traffic.

    ``upstreams``: ``(address, port)`` of the proxies the daemon may reach; their TCP is
    allowed. Without them every IP frame is a leak (the tests' positive controls rely on
    this to see the daemon's own traffic).
    """
    allowed = frozenset((str(ipaddress.ip_address(a)), p) for a, p in upstreams)
    leaks: list[FrameSummary] = []
    counts = {Verdict.LINK_CONTROL: 0, Verdict.UPSTREAM: 0}
    for raw in frames:
        frame = summarize(raw)
        v = verdict(frame, allowed)
        if v is Verdict.LEAK:
            leaks.append(frame)
        else:
            counts[v] += 1
    return LeakReport(tuple(leaks), counts[Verdict.LINK_CONTROL], counts[Verdict.UPSTREAM])
