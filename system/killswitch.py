"""The kill switch: one nftables table, ``inet atlantic``, that fails closed.

While the table is in place nothing leaves the machine through an interface other
than loopback, the TUN or configured internal ones, except packets that carry the
daemon's firewall mark and go to the upstream proxy (in direct mode: marked packets
to anywhere), plus LAN prefixes and DHCP when configured. The table is not tied to
the daemon's life: if the daemon dies, the rules stay and the machine stays closed
until ``atlantic down`` calls ``remove()``.

Blocked packets are *rejected*, not dropped: a dropped TCP SYN makes ``connect()``
retry for minutes, a rejected one fails it at once, and an app that fails fast is what
a person behind a kill switch expects to see. TCP gets a reset (measured: ECONNREFUSED
in under 1 ms for IPv4 and IPv6, where an ICMPv6 error only took effect with the SYN
retransmit after 1 s), everything else ICMP administratively prohibited. Both are
delivered to the local socket; nothing goes on the wire.

``render_ruleset`` is pure and tested against text; ``apply``/``remove`` feed it to
``nft -f -``, where one transaction first removes any previous table and then adds
the new one, so there is never a moment without rules and twice is safe.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from atlantic.system import nft

TABLE = "atlantic"
BLOCKED_COMMENT = "atlantic: blocked"
DNS_COMMENT = "atlantic: dns blocked"  # DNS trying to leave a physical interface (counted apart)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An upstream address and TCP port the daemon's marked sockets may reach."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class KillSwitchConfig:
    """What may leave the machine while Atlantic is up.

    ``upstream`` empty with ``direct=True`` allows marked packets to any address
    (the upstream is "everywhere"); empty without ``direct`` allows none.
    ``allow_interfaces`` are internal interfaces (container bridges, ``br-*``
    wildcards allowed) that traffic may use freely: never a physical one.
    ``resolvers`` are the network's DNS servers, which marked UDP/TCP 53 may reach: the
    daemon looks its proxy's name up again there after a network change.
    """

    tun: str = "atl0"
    fwmark: int = 0x2026
    upstream: tuple[Endpoint, ...] = ()
    direct: bool = False
    allow_lan: tuple[str, ...] = ()
    allow_dhcp: bool = False
    allow_interfaces: tuple[str, ...] = ()
    forward: bool = True
    resolvers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for p in self.allow_lan:
            ipaddress.ip_network(p, strict=False)  # ValueError names the bad prefix
        for a in self.resolvers:
            ipaddress.ip_address(a)
        for e in self.upstream:
            ipaddress.ip_address(e.address)
            if not 1 <= e.port <= 65535:
                raise ValueError(f"upstream port {e.port} is not within 1..65535")
        for name in (self.tun, *self.allow_interfaces):
            if not name or '"' in name or len(name) > 15:
                raise ValueError(f"bad interface name {name!r}")


class KillSwitchError(Exception):
    """nft refused the ruleset or is missing; the message says why in one line."""


def _family(addr: str) -> str:
    return "ip" if ipaddress.ip_network(addr, strict=False).version == 4 else "ip6"


def _lan_rules(cfg: KillSwitchConfig, direction: str) -> list[str]:
    by_family: dict[str, list[str]] = {"ip": [], "ip6": []}
    for p in cfg.allow_lan:
        by_family[_family(p)].append(str(ipaddress.ip_network(p, strict=False)))
    return [f"{fam} {direction} {{ {', '.join(nets)} }} accept" for fam, nets in by_family.items() if nets]


def _common_rules(cfg: KillSwitchConfig) -> list[str]:
    rules = [f'oifname "{cfg.tun}" accept']
    rules += [f'oifname "{name}" accept' for name in cfg.allow_interfaces]
    return rules


def _resolver_rules(cfg: KillSwitchConfig, mark: str) -> list[str]:
    by_family: dict[str, list[str]] = {"ip": [], "ip6": []}
    for a in dict.fromkeys(str(ipaddress.ip_address(a)) for a in cfg.resolvers):
        by_family[_family(a)].append(a)
    return [f"{mark} {fam} daddr {{ {', '.join(addrs)} }} {proto} dport 53 accept"
            for fam, addrs in by_family.items() if addrs for proto in ("udp", "tcp")]


def _output_rules(cfg: KillSwitchConfig) -> list[str]:
    rules = ['oifname "lo" accept', *_common_rules(cfg)]
    mark = f"meta mark {cfg.fwmark:#x}"
    if cfg.direct:
        rules.append(f"{mark} accept")
    for e in cfg.upstream:
        rules.append(f"{mark} {_family(e.address)} daddr {ipaddress.ip_address(e.address)} tcp dport {e.port} accept")
    if not cfg.direct:  # in direct mode marked packets go anywhere already
        rules += _resolver_rules(cfg, mark)
    rules += _lan_rules(cfg, "daddr")
    if cfg.allow_dhcp:
        rules.append("udp sport 68 udp dport 67 accept")
        rules.append("udp sport 546 udp dport 547 accept")
    # Neighbour discovery stays on the link and is what ARP is for IPv4 (which nftables'
    # inet family does not see): without it no IPv6 upstream or LAN host is reachable.
    rules.append(
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
    )
    return rules + _reject_rules()


def _reject_rules() -> list[str]:
    return [
        f'tcp dport 53 counter reject with tcp reset comment "{DNS_COMMENT}"',
        f'udp dport 53 counter reject with icmpx type admin-prohibited comment "{DNS_COMMENT}"',
        f'meta l4proto tcp counter reject with tcp reset comment "{BLOCKED_COMMENT}"',
        f'counter reject with icmpx type admin-prohibited comment "{BLOCKED_COMMENT}"',
    ]


def _forward_rules(cfg: KillSwitchConfig) -> list[str]:
    # Containers and routed clients: into the TUN (policy routing sends them there),
    # replies coming out of it, internal bridges and the LAN; nothing else.
    rules = [*_common_rules(cfg), f'iifname "{cfg.tun}" accept', *_lan_rules(cfg, "daddr")]
    return rules + _reject_rules()


def _chain(name: str, hook: str, rules: list[str]) -> list[str]:
    lines = [f"\tchain {name} {{", f"\t\ttype filter hook {hook} priority filter; policy drop;"]
    lines += [f"\t\t{r}" for r in rules]
    lines.append("\t}")
    return lines


def render_ruleset(cfg: KillSwitchConfig) -> str:
    """The ``nft -f`` script that replaces any ``inet atlantic`` table with *cfg*'s (pure).

    ``add table`` + ``delete table`` first makes the removal safe when no table exists;
    all of it is one atomic transaction.
    """
    lines = [f"add table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    lines += _chain("output", "output", _output_rules(cfg))
    if cfg.forward:
        lines += _chain("forward", "forward", _forward_rules(cfg))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_removal() -> str:
    """The ``nft -f`` script that deletes the table, present or not (pure)."""
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n"


def apply(cfg: KillSwitchConfig) -> None:
    """Install the kill switch in the calling thread's network namespace (atomic; safe twice)."""
    nft.apply_script(render_ruleset(cfg), KillSwitchError, "nft refused the kill switch ruleset")


def remove() -> None:
    """Delete the ``inet atlantic`` table; nothing happens when it is absent."""
    nft.apply_script(render_removal(), KillSwitchError, "nft could not remove the kill switch")


def is_active() -> bool:
    """True while the ``inet atlantic`` table exists."""
    return nft.has_table("inet", TABLE, KillSwitchError)


def parse_counters(listing: dict) -> dict[str, int]:
    """Blocked packet and byte totals from ``nft -j list table inet atlantic`` output (pure):
    every rejected packet, and apart from them how many of those were DNS."""
    out = {"blocked_packets": 0, "blocked_bytes": 0, "blocked_dns_packets": 0}
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("comment") not in (BLOCKED_COMMENT, DNS_COMMENT):
            continue
        for expr in rule.get("expr", []):
            c = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(c, dict):
                out["blocked_packets"] += int(c.get("packets", 0))
                out["blocked_bytes"] += int(c.get("bytes", 0))
                if rule.get("comment") == DNS_COMMENT:
                    out["blocked_dns_packets"] += int(c.get("packets", 0))
    return out


def counters() -> dict[str, int] | None:
    """What the kill switch has blocked so far, or None when it is not installed."""
    r = nft.run(["-j", "list", "table", "inet", TABLE], None, KillSwitchError)
    if r.returncode != 0:
        return None
    try:
        return parse_counters(json.loads(r.stdout))
    except ValueError:
        return None


__all__ = [
    "Endpoint",
    "KillSwitchConfig",
    "KillSwitchError",
    "apply",
    "counters",
    "is_active",
    "parse_counters",
    "remove",
    "render_removal",
    "render_ruleset",
]
