"""Keeping the machine sealed and the pool fresh while the network changes under it.

Three inputs: a network change from :class:`~atlantic.system.netwatch.NetWatch` (a new
address, default route or uplink, a link bounce, a resume from suspend), a notification
from :class:`~atlantic.system.tamperwatch.TamperWatch` that rules, routes or nftables
changed (``ip rule flush``, ``nft flush ruleset``, ``systemctl reload nftables``: checked
``SETTLE_S`` later, at most once per ``MIN_GAP_S``), and a check every ``SAFETY_CHECK_S``
seconds for whatever a notification could miss (every ``CHECK_S`` seconds when
notifications cannot be had). What it does:

- a major change: the pools drop their idle and warm connections (they belong to the old
  path; a flow under way finishes or fails on its own), the leak probe runs again, and the
  proxies' names are looked up again over the marked path (:mod:`atlantic.client.repin`);
- any change, and every check: whatever someone removed of our ip rules, routes and
  kill-switch table is put back, one log line saying what. The kill switch stays on while
  offline; nothing here ever lifts it;
- the networks reached by routes of their own (a VPN's ``10.0.0.0/8``, the LAN subnet),
  whose flows the kill switch refuses unless ``capture.lan`` lists them, are listed in
  status and logged whenever the list changes (see :mod:`atlantic.system.uncovered`).

Every netlink dump and ``nft`` call runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from atlantic.client.repin import Repin
from atlantic.system import killswitch, redirect, routing
from atlantic.system.netchange import Change
from atlantic.system.tamperwatch import TamperWatch
from atlantic.system.uncovered import uncovered

MAX_LISTED = 8  # routes named in the log line; status lists them all
log = logging.getLogger("atlantic")

CHECK_S = 5.0  # the poll without notifications
SAFETY_CHECK_S = 60.0  # the poll with them
SETTLE_S = 0.1  # after a notification, for the rest of its burst (one nft -f sends several)
MIN_GAP_S = 1.0  # between two checks: a storm of notifications costs at most one check a second


class NetGuard:
    """Reacts to network changes and restores what others removed."""

    def __init__(self, *, plan: routing.RoutingPlan, killswitch_config: killswitch.KillSwitchConfig | None,
                 redirect_config: redirect.RedirectConfig | None = None, drain: Callable[[], None],
                 recheck_leaks: Callable[[], None], check_every: float = CHECK_S,
                 safety_every: float = SAFETY_CHECK_S, lan: tuple[str, ...] = (), tun: str = "") -> None:
        self.plan, self.ks, self.lan, self.tun = plan, killswitch_config, lan, tun
        self.redirect = redirect_config
        self.blocked_routes: list[str] = []
        self.drain, self.recheck_leaks, self.check_every = drain, recheck_leaks, check_every
        self.safety_every = safety_every
        self.checks = 0
        self.watch: TamperWatch | None = None  # while run() is watching for notifications
        self.changes = 0
        self.major_changes = 0
        self.repairs = 0
        self.last_change: str | None = None
        self.repin: Repin | None = None  # set by the daemon when a proxy is named by host name
        self._repinning: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def on_change(self, change: Change) -> None:
        """From NetWatch, on the loop: act at once on the pool, then check soon."""
        self.changes += 1
        self.last_change = change.line()
        if change.is_major:
            self.major_changes += 1
            self.drain()
            self.look_up_again()
        self.recheck_leaks()
        self._wake.set()

    def look_up_again(self) -> None:
        """Start a re-resolve of the proxies' names (a newer change replaces one under way)."""
        if self.repin is None:
            return
        if self._repinning is not None:
            self._repinning.cancel()
        self._repinning = asyncio.get_running_loop().create_task(self._repin(self.repin))

    async def _repin(self, repin: Repin) -> None:
        try:
            await repin.run()
        except killswitch.KillSwitchError as exc:
            log.warning("re-resolving the proxy: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the guard
            log.error("re-resolving the proxy failed: %s: %s", type(exc).__name__, exc)

    async def seal(self, cfg: killswitch.KillSwitchConfig) -> None:
        """Replace the kill switch with ``cfg`` (atomic, in a worker thread); the guard
        puts this one back from now on."""
        await asyncio.to_thread(killswitch.apply, cfg)
        self.ks = cfg

    async def run(self) -> None:
        """Until cancelled: check (and repair) at once, after each change or notification,
        and every ``safety_every`` s (``check_every`` s without notifications)."""
        watch = TamperWatch(self._wake.set)
        self.watch = watch
        problem = watch.start()
        if problem is not None:
            self._poll_instead(problem)
        try:
            await self._guard()
        finally:
            watch.close()
            self.watch = None
            if self._repinning is not None:
                self._repinning.cancel()

    async def _guard(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            checked_at = loop.time()
            lines = await asyncio.to_thread(self.repair)
            self.checks += 1
            for line in lines:
                log.warning("%s", line)
            if self.watch is not None and self.watch.broken is not None:
                self._poll_instead(self.watch.broken)
            try:
                async with asyncio.timeout(self.check_every if self.watch is None else self.safety_every):
                    await self._wake.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(max(SETTLE_S, checked_at + MIN_GAP_S - loop.time()))

    def _poll_instead(self, why: str) -> None:
        """No notifications (``why``): back to checking every ``check_every`` s."""
        log.warning("%s: what others remove is checked every %g s instead", why, self.check_every)
        self.watch = None

    def repair(self) -> list[str]:
        """Put back what is missing (in a worker thread); one warning line per repair or
        failure. The list of blocked routes is refreshed too (logged once per change)."""
        lines: list[str] = []
        if self.ks is not None and not killswitch.is_active():
            try:
                killswitch.apply(self.ks)
                lines.append("the kill switch table was removed by someone else: put back")
            except killswitch.KillSwitchError as exc:
                lines.append(f"the kill switch table is gone and cannot be put back: {exc}")
        if self.redirect is not None and not redirect.is_active():
            try:  # meanwhile TCP went through the TUN's packet NAT: slower, never open
                redirect.apply(self.redirect)
                lines.append("the TCP redirect table was removed by someone else: put back")
            except redirect.RedirectError as exc:
                lines.append(f"the TCP redirect table is gone and cannot be put back (TCP goes through the TUN): {exc}")
        gone = routing.missing(self.plan)
        if gone:
            try:
                routing.apply(self.plan)
                lines.append(f"removed by someone else, put back: {', '.join(gone)}")
            except Exception as exc:  # noqa: BLE001 - say so; the kill switch still holds
                lines.append(f"cannot put back {', '.join(gone)}: {exc}")
        self.repairs += len(lines)
        blocked = [r.describe() for r in uncovered(routing.main_routes(), lan=self.lan, tun=self.tun)]
        if blocked != self.blocked_routes:
            self.blocked_routes = blocked
            if blocked:  # information, not a warning: every laptop has at least its LAN subnet here
                more = f" and {len(blocked) - MAX_LISTED} more" if len(blocked) > MAX_LISTED else ""
                log.info("blocked while up (reached by routes of their own, not the default one): %s%s; "
                         "list a prefix in capture.lan to reach it directly", ", ".join(blocked[:MAX_LISTED]), more)
        return lines

    def status(self) -> dict:
        """The ``network`` part of status."""
        report = {"changes": self.changes, "major_changes": self.major_changes, "repairs": self.repairs,
                  "checks": self.checks, "notified": self.watch is not None,
                  "last_change": self.last_change, "blocked_routes": list(self.blocked_routes)}
        if self.repin is not None:
            report["proxy_addresses"] = self.repin.status()
        return report
