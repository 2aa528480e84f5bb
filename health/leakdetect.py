"""The runtime leak detector: the async adapter around :class:`.leakwatch.LeakWatch`.

Runs as one task of the daemon, never on a flow's path: every ``interval`` seconds it
reads the kill switch's counters (``nft -j``, in a thread); after ``up`` and whenever
``recheck()`` is called (a network change) it runs the bound-socket probe: a TCP connect
from a socket bound to the physical interface, without the daemon's mark, to the
upstream's address (or, with a direct upstream, to TEST-NET-1 192.0.2.1, which no
network routes). The kill switch must reject it at once; a connection, or silence (the
SYN left and nobody rejected it), is a leak. Alerts go to the log, one line per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from atlantic.health.leakwatch import Check, CheckResult, LeakSnapshot, LeakWatch, exit_address_result

__all__ = ["LeakDetector", "ProbeTarget", "bound_socket_probe", "default_interface"]

log = logging.getLogger("atlantic.health")

INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 1.0
NOWHERE = ("192.0.2.1", 9)  # RFC 5737 TEST-NET-1, discard port: a leak would reach no one
_BLOCKED_ERRNOS = {errno.ECONNREFUSED, errno.EACCES, errno.EPERM, errno.ENETUNREACH,
                   errno.EHOSTUNREACH, errno.ENETDOWN}


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where the bound-socket probe knocks: an address and TCP port."""

    address: str
    port: int


def default_interface(family: int = socket.AF_INET) -> str | None:
    """The interface of the main table's default route (the physical uplink), or None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_routes(family=family, table=254):
            if route.get("dst_len") == 0 and route.get_attr("RTA_OIF"):
                links = ipr.get_links(route.get_attr("RTA_OIF"))
                if links:
                    return links[0].get_attr("IFLA_IFNAME")
    return None


async def bound_socket_probe(interface: str, target: ProbeTarget,
                             timeout: float = PROBE_TIMEOUT_S) -> tuple[CheckResult, str]:
    """Try to get out through ``interface`` without the mark; OK means it was refused."""
    family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    where = f"{target.address}:{target.port} via {interface}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (target.address, target.port))
    except TimeoutError:
        return CheckResult.LEAK, f"an unmarked connect to {where} was not refused within {timeout:g} s"
    except OSError as exc:
        if exc.errno in _BLOCKED_ERRNOS:
            return CheckResult.OK, f"an unmarked connect to {where} was refused ({exc.strerror})"
        return CheckResult.SKIPPED, f"probe could not run: {exc.strerror or exc}"
    finally:
        sock.close()
    return CheckResult.LEAK, f"an unmarked connect to {where} got through"


class LeakDetector:
    """Counters every ``interval`` s, the probe after start and on ``recheck()``."""

    def __init__(self, *, read_counters: Callable[[], dict | None], target: ProbeTarget | None,
                 interface: Callable[[], str | None] = default_interface,
                 own_addresses: Callable[[], frozenset[str]] = frozenset,
                 kill_switch: bool = True, interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read_counters, self.target = read_counters, target or ProbeTarget(*NOWHERE)
        self.interface, self.own_addresses = interface, own_addresses
        self._own: frozenset[str] = frozenset()  # refreshed off the loop with the counters
        self.kill_switch, self.interval, self.clock = kill_switch, interval, clock
        self.watch = LeakWatch()
        self._recheck = asyncio.Event()
        self._recheck.set()  # the first probe right after up

    def snapshot(self) -> LeakSnapshot:
        """The latest state (read by status from any thread: one attribute)."""
        return self.watch.snapshot()

    def recheck(self) -> None:
        """Run the probe again soon (a network change); safe from the loop's thread only."""
        self._recheck.set()

    def exit_seen(self, exit_ip: str | None) -> None:
        """The health monitor learned the exit address: it must not be one of ours."""
        result, detail = exit_address_result(exit_ip, self._own)
        if result is not CheckResult.SKIPPED:
            self.watch.result(Check.EXIT_ADDRESS, result, detail, self.clock())
            self._log_alerts()

    async def run(self) -> None:
        """Until cancelled: read counters, probe when asked."""
        while True:
            await self._read_counters()
            if self._recheck.is_set():
                self._recheck.clear()
                await self._probe()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._recheck.wait()

    async def _read_counters(self) -> None:
        try:
            counts = await asyncio.to_thread(self.read_counters)
        except Exception as exc:  # noqa: BLE001 - nft missing or broken: say so, keep going
            counts = None
            log.debug("leak detector: cannot read the kill switch counters: %s", exc)
        if counts is not None:
            self.watch.counters(counts.get("blocked_packets", 0), counts.get("blocked_dns_packets", 0))
        try:  # netlink, like nft, never from the loop's thread (pyroute2 turns async inside a loop)
            self._own = await asyncio.to_thread(self.own_addresses)
        except Exception as exc:  # noqa: BLE001 - keep the last known addresses
            log.debug("leak detector: cannot list this machine's addresses: %s", exc)

    async def _probe(self) -> None:
        now = self.clock()
        if not self.kill_switch:
            self.watch.result(Check.BOUND_SOCKET, CheckResult.SKIPPED, "the kill switch is off", now)
            return
        try:
            interface = await asyncio.to_thread(self.interface)
        except Exception as exc:  # noqa: BLE001 - netlink trouble must not stop the detector
            interface = None
            log.debug("leak detector: no default interface: %s", exc)
        if interface is None:
            self.watch.result(Check.BOUND_SOCKET, CheckResult.SKIPPED, "no default route (offline)", now)
            return
        result, detail = await bound_socket_probe(interface, self.target)
        self.watch.result(Check.BOUND_SOCKET, result, detail, self.clock())
        self._log_alerts()

    def _log_alerts(self) -> None:
        for line in self.watch.alerts():
            (log.error if line.startswith("LEAK") else log.warning)("%s", line)
