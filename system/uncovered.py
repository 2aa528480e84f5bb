"""Networks this machine reaches by routes of their own, which capture does not cover (pure).

Capture takes the default route over: every flow that would use it goes to the TUN. A
more specific route of the main table (``10.0.0.0/8 via`` a VPN's gateway, the LAN's own
subnet, a docker bridge) stays in force for the daemon's marked sockets, but an
application's flow to it meets the kill switch and is refused at once, unless its prefix
is listed in ``capture.lan`` (then it goes there directly). Sending such flows to the
upstream instead would be pointless (a residential exit cannot reach a private network)
and would show the exit node where the machine's private networks are. So they are
listed, at ``up`` and in ``status``, as blocked while up, with the fix.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["MainRoute", "uncovered"]

# Never a user's network: loopback, link-local, multicast, and the TUN's reserved range.
_IGNORED = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "198.18.0.0/15",
    "::1/128", "fe80::/10", "ff00::/8", "fd00:a71a::/32",
))


@dataclass(frozen=True, slots=True)
class MainRoute:
    """One route of the main table, as netlink reports it."""

    dst: str  # "prefix/len"; "0.0.0.0/0" or "::/0" for a default route
    dev: str = ""
    gateway: str = ""
    kind: str = "unicast"  # unreachable, blackhole, prohibit, ... are not networks one reaches

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.dev}" if self.dev else ""
        return f"{self.dst}{via}{dev}"


def uncovered(routes: list[MainRoute], *, lan: tuple[str, ...] = (), tun: str = "") -> list[MainRoute]:
    """The routes whose flows are blocked while up: not default, not ours, not ignorable,
    and not inside a ``lan`` prefix. In the order given, without repeats."""
    allowed = [ipaddress.ip_network(p, strict=False) for p in lan]
    out: list[MainRoute] = []
    for route in routes:
        try:
            net = ipaddress.ip_network(route.dst, strict=False)
        except ValueError:
            continue
        if (net.prefixlen == 0 or route.kind != "unicast" or (tun and route.dev == tun)
                or any(net.version == n.version and net.subnet_of(n) for n in _IGNORED)
                or any(net.version == a.version and net.subnet_of(a) for a in allowed)):
            continue
        if route not in out:
            out.append(route)
    return out
