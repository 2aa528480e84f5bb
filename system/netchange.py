"""Network changes, pure: netlink events in, one debounced decision out.

After a new network, a new DHCP lease or a suspend the pool holds connections that are
dead but do not know it yet. The daemon wants to hear that once (not thirty times in a
DHCP storm), with the reasons, and MAJOR (connections may be dead: an address gained or
lost, a default route added, lost or replaced, an uplink down or back up, the clock
jumped over a suspend, events lost) told apart from MINOR (other links, other routes of
the main table, link-local addresses, a new IPv6 privacy address).

The adapter (:mod:`.netwatch`) feeds events with the time: ``event(ev, now)``,
``tick(monotonic, wall)``, ``due(now)``. A change is due ``quiet`` s after its last event
or ``max_delay`` s after its first. Atlantic's own TUN and table, loopback and tables
other than main are ignored: they are the daemon's own doing, or no way out.

The tracker remembers links, addresses and routes, so a repeat (a DHCP renewal, a router
advertisement) is no change and an "uplink" is a link with a default route. The kernel
flushes IPv4 routes silently when a link goes admin down or loses its last IPv4 address;
the tracker forgets them the same way.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Address", "Change", "ChangeTracker", "ClockJumpDetector", "Event", "EventsLost",
           "Kind", "Link", "Route"]

MAIN_TABLE = 254
QUIET_S = 1.0
MAX_DELAY_S = 5.0
CLOCK_JUMP_S = 5.0
MAX_REASONS = 8  # a log line stays one line even after a storm


class Kind(enum.Enum):
    """MAJOR: the path to the upstream may have changed, connections may be dead."""

    MINOR = "minor"
    MAJOR = "major"


@dataclass(frozen=True, slots=True)
class Link:
    """A link appeared or changed (RTM_NEWLINK) or went away (RTM_DELLINK)."""

    index: int
    name: str
    admin_up: bool  # IFF_UP
    running: bool  # IFF_RUNNING: carrier, or a device that has none
    operstate: str = ""  # "UP", "DOWN", "LOWERLAYERDOWN"...: for the reason only
    removed: bool = False

    @property
    def is_up(self) -> bool:
        """Up as `ip link` shows it (not NO-CARRIER, not DOWN)."""
        return self.admin_up and self.running and not self.removed


@dataclass(frozen=True, slots=True)
class Address:
    """An address was added or removed; ``family`` is 4 or 6."""

    family: int
    address: str
    index: int
    prefixlen: int = 0
    label: str = ""  # IFA_LABEL (IPv4 only), the device name when the index is unknown
    temporary: bool = False  # an IPv6 privacy address: a new one breaks nothing
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """A unicast route was added or removed; ``dst`` is "" for a default route."""

    family: int
    dst: str = ""
    gateway: str = ""
    oif: int = 0
    table: int = MAIN_TABLE
    metric: int = 0
    kernel: bool = False  # proto kernel: follows an address or a link, already counted
    removed: bool = False
    replace: bool = False  # NLM_F_REPLACE: it took the place of one with its metric


@dataclass(frozen=True, slots=True)
class EventsLost:
    """The adapter lost events (socket overflow, reopened): anything may have changed."""

    detail: str


Event = Link | Address | Route | EventsLost


@dataclass(frozen=True, slots=True)
class Change:
    """One debounced network change: what kind and why (``more``: reasons left out)."""

    kind: Kind
    reasons: tuple[str, ...]
    more: int = 0

    @property
    def is_major(self) -> bool:
        """True when connections made before it may be dead."""
        return self.kind is Kind.MAJOR

    def line(self) -> str:
        """The change as one log line."""
        extra = f" (+{self.more} more)" if self.more else ""
        return f"{self.kind.value} network change: {'; '.join(self.reasons)}{extra}"


class ClockJumpDetector:
    """Suspend seen from two clocks: the monotonic one stops while asleep, ``wall`` (boot
    time, or real time) does not; a gap between them beyond ``threshold`` is a jump."""

    def __init__(self, threshold: float = CLOCK_JUMP_S) -> None:
        self.threshold = threshold
        self._offset: float | None = None

    def reading(self, monotonic: float, wall: float) -> float | None:
        """The jump since the previous reading in seconds, or None when below threshold."""
        offset, previous = wall - monotonic, self._offset
        self._offset = offset
        if previous is None or abs(offset - previous) < self.threshold:
            return None
        return offset - previous


class ChangeTracker:
    """Known network state, and the reasons collected since the first unreported event."""

    def __init__(self, *, tun: str, table: int, quiet: float = QUIET_S,
                 max_delay: float = MAX_DELAY_S, clock_jump: float = CLOCK_JUMP_S) -> None:
        self.tun, self.table, self.quiet, self.max_delay = tun, table, quiet, max_delay
        self.jumps = ClockJumpDetector(clock_jump)
        self._names: dict[int, str] = {}
        self._up: dict[int, bool] = {}
        self._addresses: set[tuple[int, int, str]] = set()  # (index, family, address)
        self._routes: set[tuple[int, str, int, str, int]] = set()  # (family, dst, oif, gateway, metric)
        self._bounced: set[int] = set()  # uplinks that went down (their routes may be gone)
        self._reasons: dict[str, bool] = {}  # reason -> major, in arrival order
        self._first: float | None = None
        self._last = 0.0

    def resync(self, events: Iterable[Event]) -> None:
        """Replace the known state with a dump's; nothing about it is reported."""
        for known in (self._names, self._up, self._addresses, self._routes, self._bounced):
            known.clear()
        for ev in events:
            self._apply(ev)

    def event(self, ev: Event, now: float) -> None:
        """Take one event; a real change opens or extends the debounce window."""
        for reason, major in self._apply(ev):
            self._note(reason, major, now)

    def tick(self, monotonic: float, wall: float) -> None:
        """A periodic pair of clock readings: a jump between them is a suspend/resume."""
        jump = self.jumps.reading(monotonic, wall)
        if jump is not None:
            self._note(f"clock jumped {jump:+.0f} s (suspend/resume)", True, monotonic)

    def resumed(self, now: float, source: str = "logind") -> None:
        """The machine woke from a suspend, as ``source`` said: a major change, in the same
        window as the clock jump and the netlink events of that resume."""
        self._note(f"resumed from suspend ({source})", True, now)

    def is_pending(self) -> bool:
        """True while reasons wait for their window to close."""
        return self._first is not None

    def deadline(self) -> float | None:
        """When :meth:`due` will return a change (None: nothing pending)."""
        if self._first is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def due(self, now: float) -> Change | None:
        """The change once its window has closed (then the next window starts empty)."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        reasons = list(self._reasons)
        kind = Kind.MAJOR if any(self._reasons.values()) else Kind.MINOR
        self._reasons.clear()
        self._first = None
        return Change(kind, tuple(reasons[:MAX_REASONS]), max(0, len(reasons) - MAX_REASONS))

    def is_uplink(self, index: int) -> bool:
        """True when the link carries a default route of the main table."""
        return any(oif == index and not dst for _, dst, oif, _, _ in self._routes)

    def __repr__(self) -> str:
        return (f"<ChangeTracker links={len(self._names)} addresses={len(self._addresses)} "
                f"routes={len(self._routes)} pending={len(self._reasons)}>")

    # ---- state ---------------------------------------------------------------------------

    def _note(self, reason: str, major: bool, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now
        self._reasons[reason] = self._reasons.get(reason, False) or major

    def _name(self, index: int, label: str = "") -> str:
        return self._names.get(index) or label.split(":")[0] or f"if{index}"

    def _is_ours(self, index: int) -> bool:
        return self._names.get(index) in (self.tun, "lo")

    def _apply(self, ev: Event) -> list[tuple[str, bool]]:
        if isinstance(ev, Link):
            return self._link(ev)
        if isinstance(ev, Address):
            return self._address(ev)
        if isinstance(ev, Route):
            return self._route(ev)
        return [(f"netlink events lost: {ev.detail}", True)]

    def _link(self, ev: Link) -> list[tuple[str, bool]]:
        ours, uplink = ev.name in (self.tun, "lo"), self.is_uplink(ev.index) or ev.index in self._bounced
        what = f"{'uplink' if uplink else 'link'} {ev.name}"
        if ev.removed:
            was = self._up.pop(ev.index, None)
            self._names.pop(ev.index, None)
            self._bounced.discard(ev.index)
            self._forget(ev.index, families=(4, 6))
            return [] if was is None or ours else [(f"{what} removed", uplink)]
        was, self._names[ev.index], self._up[ev.index] = self._up.get(ev.index), ev.name, ev.is_up
        if not ev.admin_up:
            self._forget(ev.index, families=(4,))  # the kernel flushed them, silently
        if ours or was == ev.is_up or (was is None and not ev.is_up):
            return []
        if ev.is_up:
            self._bounced.discard(ev.index)
            return [(f"{what} up again" if uplink else f"{what} up", uplink)]
        if uplink:
            self._bounced.add(ev.index)
        return [(f"{what} down" + (f" ({ev.operstate})" if ev.operstate else ""), uplink)]

    def _address(self, ev: Address) -> list[tuple[str, bool]]:
        if self._is_ours(ev.index) or ev.label.split(":")[0] in (self.tun, "lo"):
            return []
        key = (ev.index, ev.family, ev.address)
        if ev.removed == (key not in self._addresses):
            return []  # a refresh of a known address, or a removal of an unknown one
        where = f"{ev.address}/{ev.prefixlen} on {self._name(ev.index, ev.label)}"
        link_local = ipaddress.ip_address(ev.address).is_link_local
        if not ev.removed:
            self._addresses.add(key)
            return [(f"new address {where}", not (link_local or ev.temporary))]
        self._addresses.discard(key)
        if ev.family == 4 and not any(i == ev.index and f == 4 for i, f, _ in self._addresses):
            self._forget(ev.index, families=(4,))  # the kernel flushed its routes, silently
        return [(f"lost address {where}", not link_local)]

    def _route(self, ev: Route) -> list[tuple[str, bool]]:
        if ev.table != MAIN_TABLE or ev.table == self.table or self._is_ours(ev.oif):
            return []
        if ev.dst and (ev.kernel or ipaddress.ip_network(ev.dst, strict=False).is_link_local):
            return []  # it came with an address or a link, reported as such
        what = f"route {ev.dst}" if ev.dst else "default route"
        via = (f" via {ev.gateway}" if ev.gateway else "") + f" dev {self._name(ev.oif)}"
        key = (ev.family, ev.dst, ev.oif, ev.gateway, ev.metric)
        if ev.replace:  # the kernel says nothing about the route it replaced
            self._routes -= {r for r in self._routes if r[:2] == key[:2] and r[4] == ev.metric and r != key}
        if ev.removed == (key not in self._routes):
            return []  # a refresh of a known route, or a removal of an unknown one
        (self._routes.discard if ev.removed else self._routes.add)(key)
        return [(f"{'lost' if ev.removed else 'new'} {what}{via}", not ev.dst)]

    def _forget(self, index: int, *, families: tuple[int, ...]) -> None:
        self._routes -= {r for r in self._routes if r[2] == index and r[0] in families}
        if len(families) == 2:  # the link is gone, and its addresses with it
            self._addresses -= {a for a in self._addresses if a[0] == index}
