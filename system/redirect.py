"""The kernel NAT for TCP: one nftables table, ``inet atlantic_redirect``.

Every TCP connection the machine opens whose route goes out of the TUN is redirected
by the kernel, at its first packet, to the daemon's loopback listener (nftables
``redirect`` in a ``nat`` chain on the output hook, as sing-box's ``auto_redirect``
and redsocks do). The TUN still carries DNS, UDP, ICMP and any TCP that reaches it
another way (forwarded from a container, or while this table is missing): the packet
NAT in Python (``interceptor/stack.py``) stays, and ``capture.tcp = "tun"`` uses it for
TCP too.

Why: with the table, a TCP flow never crosses Python per packet. The handshake, every
segment and every ACK stay in the kernel, and the listener learns where the
application was going from conntrack (``interceptor/origdst.py``).

Matching on ``oifname`` after the route lookup means the redirect covers exactly what
the TUN would have received: policy routing (the daemon's marked sockets use the main
table, LAN prefixes and local routes stay off the TUN) decides, not a second list here.
Marked packets are skipped anyway, so the daemon's own connections can never loop back.

``render_redirect`` is pure and tested against text; ``apply``/``remove`` feed one atomic
``nft -f`` transaction, safe twice, like the kill switch. The table is separate from the
kill switch's: the kill switch may outlive the daemon (lockdown), the redirect must
not point at a listener that is gone for longer than a stop takes. If the daemon dies
the leftover table sends new TCP flows to a closed port (refused at once: still
closed); ``atlantic down`` or the next start replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlantic.system import nft

TABLE = "atlantic_redirect"
COMMENT = "atlantic: tcp to listener"


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    """Which TCP goes where: flows routed out of ``tun`` to the loopback ``port``.

    ``ipv4``/``ipv6``: whether that family is redirected (a family whose loopback
    listener could not be bound stays on the TUN's packet NAT).
    """

    tun: str = "atl0"
    fwmark: int = 0x2026
    port: int = 0
    ipv4: bool = True
    ipv6: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"listener port {self.port} is not within 1..65535")
        if not self.tun or '"' in self.tun or len(self.tun) > 15:
            raise ValueError(f"bad interface name {self.tun!r}")


class RedirectError(Exception):
    """nft refused the redirect table or is missing; the message says why in one line."""


def render_redirect(cfg: RedirectConfig) -> str:
    """The ``nft -f`` script that replaces any ``inet atlantic_redirect`` table with *cfg*'s (pure)."""
    families = [f for f, on in (("ipv4", cfg.ipv4), ("ipv6", cfg.ipv6)) if on]
    lines = [
        f"add table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        f"\t\tmeta mark {cfg.fwmark:#x} return",
    ]
    lines += [f'\t\toifname "{cfg.tun}" meta nfproto {fam} meta l4proto tcp counter '
              f'redirect to :{cfg.port} comment "{COMMENT}"' for fam in families]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def render_removal() -> str:
    """The ``nft -f`` script that deletes the table, present or not (pure)."""
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n"


def apply(cfg: RedirectConfig) -> None:
    """Install the redirect in the calling thread's network namespace (atomic; safe twice)."""
    nft.apply_script(render_redirect(cfg), RedirectError, "nft refused the TCP redirect table")


def remove() -> None:
    """Delete the table; nothing happens when it is absent."""
    nft.apply_script(render_removal(), RedirectError, "nft could not remove the TCP redirect table")


def is_active() -> bool:
    """True while the table exists."""
    return nft.has_table("inet", TABLE, RedirectError)


__all__ = ["RedirectConfig", "RedirectError", "apply", "is_active", "remove", "render_redirect", "render_removal"]
