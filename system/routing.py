"""Policy routing for capture, as wg-quick does it, applied and restored through netlink.

Every packet not carrying Atlantic's firewall mark looks up Atlantic's table, whose
default route is the TUN device; the daemon's own sockets carry the mark and keep using
the main table. A ``lookup main suppress_prefixlength 0`` rule in front keeps every more
specific route of the main table (LAN, loopback, the TUN's own /30) working.

The plan is pure data (``plan_routing``); ``prepare`` turns it into the record that undoes
it (the daemon writes that to its state file first), ``apply`` removes what it would add
before adding it, so it is safe twice, and ``restore(record)`` removes exactly that, also
after a crash.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

MAIN_TABLE = 254
FAIL_CLOSED_METRIC = 4_000_000_000


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``ip rule``: lookup ``table`` at ``priority``, optionally for unmarked packets."""

    family: int
    priority: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    dst: str | None = None  # "prefix/len": only packets to it (LAN exclusions)
    ip_proto: int | None = None  # with dport: only this protocol and port (DNS)
    dport: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One default route of ``table``: through device ``dev``, or ``unreachable`` if dev is None.

    The unreachable route sits behind the device route (higher metric) and outlives the
    TUN: if the daemon dies and the kernel drops the device with its route, captured
    traffic fails at once instead of falling through to the main table (fail closed).
    """

    family: int
    table: int
    dev: str | None
    metric: int = 0


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A sysctl value to set while up, with the value to put back."""

    path: str
    value: str


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """Everything capture changes in a network namespace."""

    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[Sysctl, ...]

    def to_json(self) -> dict:
        """A JSON-safe record (for the state file)."""
        return {
            "rules": [asdict(r) for r in self.rules],
            "routes": [asdict(r) for r in self.routes],
            "sysctls": [asdict(s) for s in self.sysctls],
        }

    @classmethod
    def from_json(cls, data: dict) -> RoutingPlan:
        """Read back what ``to_json`` wrote."""
        return cls(
            rules=tuple(Rule(**r) for r in data.get("rules", [])),
            routes=tuple(Route(**r) for r in data.get("routes", [])),
            sysctls=tuple(Sysctl(**s) for s in data.get("sysctls", [])),
        )


IPV6_MODES = ("captured", "blocked")
DNS_PORT = 53
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17


def plan_routing(
    tun: str,
    table: int,
    fwmark: int,
    priority: int,
    *,
    ipv6: str = "blocked",
    capture_dns: bool = False,
    lan: tuple[str, ...] | list[str] = (),
) -> RoutingPlan:
    """The rules and routes that send every unmarked packet to ``tun`` (pure).

    Per family, in priority order: with *capture_dns*, marked packets go to main
    and DNS (udp and tcp port 53) of everything else to *table*, even to a resolver
    on the LAN; then the *lan* prefixes stay in main; then wg-quick's two rules.
    IPv6 is ``"captured"`` (a default route through ``tun`` like IPv4) or
    ``"blocked"`` (only the unreachable default: connect() fails at once with
    ENETUNREACH); never left to the main table.
    """
    if ipv6 not in IPV6_MODES:
        raise ValueError(f"ipv6 must be one of {', '.join(IPV6_MODES)}, got {ipv6!r}")
    if priority < 6:
        raise ValueError(f"rule priority {priority} leaves no room for the rules in front of it (need >= 6)")
    rules: list[Rule] = []
    routes: list[Route] = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        if capture_dns:
            rules.append(Rule(fam, priority - 5, MAIN_TABLE, fwmark=fwmark))
            rules.append(Rule(fam, priority - 4, table, ip_proto=_IPPROTO_UDP, dport=DNS_PORT))
            rules.append(Rule(fam, priority - 3, table, ip_proto=_IPPROTO_TCP, dport=DNS_PORT))
        for prefix in lan:
            net = ipaddress.ip_network(prefix, strict=False)
            if (net.version == 4) == (fam == socket.AF_INET):
                rules.append(Rule(fam, priority - 2, MAIN_TABLE, dst=str(net)))
        rules.append(Rule(fam, priority - 1, MAIN_TABLE, suppress_prefixlength=0))
        rules.append(Rule(fam, priority, table, fwmark=fwmark, invert=True))
        if fam == socket.AF_INET or ipv6 == "captured":
            routes.append(Route(fam, table, tun))
        routes.append(Route(fam, table, None, metric=FAIL_CLOSED_METRIC))
    return RoutingPlan(
        rules=tuple(rules),
        routes=tuple(routes),
        # Replies to the daemon's marked sockets must pass reverse-path filtering with
        # the mark taken into account, as wg-quick arranges.
        sysctls=(Sysctl("net/ipv4/conf/all/src_valid_mark", "1"),),
    )


_FIB_RULE_INVERT = 0x2
_RTN_UNREACHABLE = 7  # <linux/rtnetlink.h>


def _rule_args(rule: Rule) -> dict:
    args: dict = {"family": rule.family, "table": rule.table, "priority": rule.priority}
    if rule.fwmark is not None:
        args.update(fwmark=rule.fwmark, fwmask=0xFFFFFFFF)
    if rule.invert:
        args["flags"] = _FIB_RULE_INVERT
    if rule.suppress_prefixlength is not None:
        # pyroute2 drops a `suppress_prefixlength=0` keyword; the raw attribute name works.
        args["FRA_SUPPRESS_PREFIXLEN"] = rule.suppress_prefixlength
    if rule.dst is not None:
        net = ipaddress.ip_network(rule.dst, strict=False)
        args.update(dst=str(net.network_address), dst_len=net.prefixlen)
    if rule.ip_proto is not None:
        args["FRA_IP_PROTO"] = rule.ip_proto
    if rule.dport is not None:
        args["FRA_DPORT_RANGE"] = f"{rule.dport}:{rule.dport}"
    return args


def _default_dst(route: Route) -> str:
    return "0.0.0.0/0" if route.family == socket.AF_INET else "::/0"


def _route_args(ipr, route: Route) -> dict:
    args = {"family": route.family, "dst": _default_dst(route), "table": route.table, "priority": route.metric}
    if route.dev is None:
        args["type"] = "unreachable"
        return args
    idx = ipr.link_lookup(ifname=route.dev)
    if not idx:
        raise RoutingError(f"device {route.dev} does not exist")
    args["oif"] = idx[0]
    return args


def _sysctl_file(path: str) -> Path:
    return Path("/proc/sys") / path


def prepare(plan: RoutingPlan) -> RoutingPlan:
    """The record that undoes ``plan``: its rules and routes, and today's sysctl values.

    Write it to the state file *before* ``apply`` so a crash at any point can be undone.
    """
    previous = tuple(Sysctl(s.path, _sysctl_file(s.path).read_text().strip()) for s in plan.sysctls)
    return RoutingPlan(plan.rules, plan.routes, previous)


def apply(plan: RoutingPlan) -> None:
    """Apply ``plan``; rules and routes it would add are removed first, so twice is safe.

    On failure, what was added is removed again (sysctls are left to the record from
    ``prepare``, which the caller restores).
    """
    from pyroute2 import IPRoute

    without_sysctls = RoutingPlan(plan.rules, plan.routes, ())
    restore(without_sysctls)
    try:
        for s in plan.sysctls:
            _sysctl_file(s.path).write_text(s.value)
        with IPRoute() as ipr:
            for route in plan.routes:
                ipr.route("replace", **_route_args(ipr, route))
            for rule in plan.rules:
                ipr.rule("add", **_rule_args(rule))
    except Exception:
        restore(without_sysctls)
        raise


def restore(record: RoutingPlan) -> list[str]:
    """Remove what ``record`` added and put sysctls back; each step independent.

    Returns one line per step that failed for a reason other than "already gone".
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    failures: list[str] = []
    with IPRoute() as ipr:
        for rule in record.rules:
            # A rule may have been added twice by hand; remove every copy, bounded.
            for _ in range(16):
                try:
                    ipr.rule("del", **_rule_args(rule))
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.ESRCH):
                        failures.append(f"rule {rule}: {exc}")
                    break
        for route in record.routes:
            args = {"family": route.family, "dst": _default_dst(route), "table": route.table, "priority": route.metric}
            try:
                ipr.route("del", **args)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ESRCH):
                    failures.append(f"route {route}: {exc}")
    for s in record.sysctls:
        try:
            _sysctl_file(s.path).write_text(s.value)
        except OSError as exc:
            failures.append(f"sysctl {s.path}: {exc}")
    return failures


def missing(plan: RoutingPlan) -> list[str]:
    """What of ``plan``'s rules and routes is no longer in place, one line each (empty:
    all there). Someone else's tool may have removed them: systemd-networkd with
    ManageForeignRoutingPolicyRules, a VPN script, ``ip rule flush``."""
    from pyroute2 import IPRoute

    out: list[str] = []
    with IPRoute() as ipr:
        for family in sorted({r.family for r in plan.rules}):
            have = {(r.get_attr("FRA_PRIORITY"), r.get_attr("FRA_TABLE") or r.get("table"), r.get("dst_len"))
                    for r in ipr.get_rules(family=family)}
            for rule in plan.rules:
                dst_len = ipaddress.ip_network(rule.dst, strict=False).prefixlen if rule.dst else 0
                if rule.family == family and (rule.priority, rule.table, dst_len) not in have:
                    out.append(f"ip rule {rule.priority} (lookup {rule.table})")
        for route in plan.routes:
            defaults = [r for r in ipr.get_routes(family=route.family, table=route.table) if r.get("dst_len") == 0]
            if route.dev is None:  # the fail-closed one (IPv6 gives it dev lo: match the type)
                present = any(r.get("type") == _RTN_UNREACHABLE for r in defaults)
            else:  # through the TUN (an IPv6 metric 0 reads back as 1024: match the device)
                present = any(r.get_attr("RTA_OIF") in ipr.link_lookup(ifname=route.dev) for r in defaults)
            if not present:
                family = "IPv6" if route.family == socket.AF_INET6 else "IPv4"
                out.append(f"{family} {'unreachable ' if route.dev is None else ''}default route of table {route.table}")
    return out


def main_routes() -> list:
    """The main table's routes (IPv4 and IPv6) as :class:`.uncovered.MainRoute` values."""
    from pyroute2 import IPRoute

    from atlantic.system.uncovered import MainRoute

    kinds = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=MAIN_TABLE):
                dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                out.append(MainRoute(f"{dst}/{r.get('dst_len', 0)}", names.get(r.get_attr("RTA_OIF"), ""),
                                     r.get_attr("RTA_GATEWAY") or "", kinds.get(r.get("type"), "other")))
    return out


def delete_link(name: str) -> bool:
    """Delete network device ``name`` if it exists (a TUN left by a crash); True if deleted."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


class RoutingError(Exception):
    """Routing could not be applied; the message says which part and why."""
