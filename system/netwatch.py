"""The network-change monitor: the async adapter around :class:`.netchange.ChangeTracker`.

One pyroute2 ``AsyncIPRoute`` socket, subscribed to link, IPv4/IPv6 address and route
notifications, read on the daemon's own event loop (pyroute2 registers the socket with
the running loop: no thread to join). The socket is bound before the dump that seeds
the tracker, so nothing falls between the two; events that repeat the dump are no change.

A tick every ``tick`` seconds reads the monotonic clock and ``CLOCK_BOOTTIME``: the
first stops during suspend, the second does not, so the gap between them is how long
the machine slept, even when no netlink event says so.

If reading fails (the receive buffer overflowed under a storm, the socket died), the
socket is reopened after a pause, the state re-read from a fresh dump, and a MAJOR
change reported: what happened meanwhile is unknown. The failure is logged at most
once a minute. logind's PrepareForSleep(false), where D-Bus is there to hear it
(:mod:`.sleepwatch`), comes in through :meth:`NetWatch.resumed`: the same debounced
change as the clock gap, which stays as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import (RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR,
                                   RTM_NEWLINK, RTM_NEWROUTE, RTMGRP_IPV4_IFADDR,
                                   RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE,
                                   RTMGRP_LINK)

from atlantic.system.netchange import (MAIN_TABLE, MAX_DELAY_S, QUIET_S, Address, Change,
                                       ChangeTracker, Event, EventsLost, Link, Route)

__all__ = ["NetWatch", "events_from"]

log = logging.getLogger("atlantic.system")

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
TICK_S = 2.0
RETRY_S, RETRY_MAX_S = 1.0, 30.0
LOG_EVERY_S = 60.0
IFF_UP, IFF_RUNNING = 0x1, 0x40
IFA_F_TEMPORARY = 0x1
NLM_F_REPLACE = 0x100
RTN_UNICAST, RTPROT_KERNEL, RTM_F_CLONED = 1, 2, 0x200
_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}


def boottime() -> float:
    """Seconds since boot, suspend included (the clock that keeps running while asleep)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def events_from(msg) -> list[Event]:
    """One rtnetlink message as tracker events (none for kinds the tracker never needs)."""
    kind = msg["header"]["type"]
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        flags = msg["flags"]
        return [Link(msg["index"], msg.get_attr("IFLA_IFNAME") or "", bool(flags & IFF_UP),
                     bool(flags & IFF_RUNNING), msg.get_attr("IFLA_OPERSTATE") or "",
                     removed=kind == RTM_DELLINK)]
    family = _FAMILY.get(msg["family"])
    if family is None:
        return []
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        if not address:
            return []
        return [Address(family, address, msg["index"], msg["prefixlen"],
                        msg.get_attr("IFA_LABEL") or "", bool(flags & IFA_F_TEMPORARY),
                        removed=kind == RTM_DELADDR)]
    if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
        return []
    if msg["type"] != RTN_UNICAST or msg["flags"] & RTM_F_CLONED:
        return []
    dst = f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}" if msg["dst_len"] else ""
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    hops = [(h.get_attr("RTA_GATEWAY"), h["oif"]) for h in msg.get_attr("RTA_MULTIPATH") or ()]
    hops = hops or [(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"))]
    return [Route(family, dst, gateway or "", oif or 0, table, msg.get_attr("RTA_PRIORITY") or 0,
                  kernel=msg["proto"] == RTPROT_KERNEL, removed=kind == RTM_DELROUTE,
                  replace=bool(msg["header"]["flags"] & NLM_F_REPLACE))
            for gateway, oif in hops]


class NetWatch:
    """Watches netlink and the clocks until cancelled; calls ``on_change`` once per change.

    ``on_change`` runs on the event loop's thread with a :class:`.netchange.Change`; it
    must not block (schedule work, do not await it). ``tun`` and ``table`` are Atlantic's
    own device and routing table, whose events are the daemon's own doing.
    """

    def __init__(self, on_change: Callable[[Change], None], *, tun: str, table: int,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = boottime,
                 tick: float = TICK_S, quiet: float = QUIET_S, max_delay: float = MAX_DELAY_S) -> None:
        self.on_change, self.clock, self.wall, self.tick_s = on_change, clock, wall, tick
        self.tracker = ChangeTracker(tun=tun, table=table, quiet=quiet, max_delay=max_delay)
        self.ready = asyncio.Event()  # set once subscribed and seeded (tests wait for it)
        self.changes = 0
        self.errors = 0
        self._wake = asyncio.Event()
        self._logged_at: float | None = None
        self._unlogged = 0

    async def run(self) -> None:
        """Until cancelled; cancellation closes the socket (nothing else to wait for)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch())
            tg.create_task(self._decide())

    def resumed(self) -> None:
        """A resume heard from logind (on the loop's thread): reported as a major change,
        merged with the clock jump and the netlink events of the same resume."""
        self.tracker.resumed(self.clock())
        self._wake.set()

    def __repr__(self) -> str:
        return f"<NetWatch changes={self.changes} errors={self.errors} {self.tracker!r}>"

    async def _watch(self) -> None:
        pause, lost = RETRY_S, ""
        while True:
            seeded = False
            try:
                async with AsyncIPRoute() as ipr:
                    await ipr.bind(groups=GROUPS)
                    self.tracker.resync(await _dump(ipr))
                    seeded, pause = True, RETRY_S
                    if lost:
                        self._feed(EventsLost(lost))
                        lost = ""
                    self.ready.set()
                    while True:
                        async for msg in ipr.get():
                            for ev in events_from(msg):
                                self._feed(ev)
            except Exception as exc:  # noqa: BLE001 - netlink trouble must not stop the monitor
                self.errors += 1
                self._log_error(exc)
                lost = _one_line(exc) if seeded else lost
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)

    async def _decide(self) -> None:
        next_tick = self.clock()
        while True:
            self._wake.clear()
            now = self.clock()
            if now >= next_tick:
                self.tracker.tick(now, self.wall())
                next_tick = now + self.tick_s
            if (change := self.tracker.due(now)) is not None:
                self._report(change)
            deadline = self.tracker.deadline()
            wake_at = next_tick if deadline is None else min(next_tick, deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - self.clock())):
                    await self._wake.wait()

    def _feed(self, ev: Event) -> None:
        self.tracker.event(ev, self.clock())
        self._wake.set()

    def _report(self, change: Change) -> None:
        self.changes += 1
        log.info("%s", change.line())
        try:
            self.on_change(change)
        except Exception as exc:  # noqa: BLE001 - a broken handler must not stop the monitor
            log.error("network change handler failed: %s", exc)

    def _log_error(self, exc: BaseException) -> None:
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        log.warning("network monitor: netlink failed: %s; reopening%s", _one_line(exc), more)
        self._logged_at, self._unlogged = now, 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def _dump(ipr: AsyncIPRoute) -> list[Event]:
    """Links, addresses and main-table routes as they are now (links first: names)."""
    events: list[Event] = []
    for request in (ipr.get_links, ipr.get_addr, lambda: ipr.get_routes(table=MAIN_TABLE)):
        async for msg in await request():
            events += events_from(msg)
    return events
