"""Notifications of rule, route and nftables changes (system/tamperwatch.py), and the guard
repairing on them at once, in a throwaway namespace (root). With its polls set to an hour,
only a notification can make the guard look: ``nft flush ruleset`` and ``ip rule del`` are
put back within seconds. Without notifications the guard polls at its short pace."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import subprocess
import time

import pytest

from atlantic.client import netguard
from atlantic.client.netguard import NetGuard
from atlantic.lab.throwaway import thread_in_netns
from atlantic.system import killswitch, redirect, routing
from atlantic.system.tamperwatch import TamperWatch

MARK, TABLE, PRIO = 0x2026, 2026, 32000
HOUR = 3600.0
WAIT_S = 10.0


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=10, capture_output=True)


async def until(predicate, what: str, limit: float = WAIT_S) -> None:
    """Wait (bounded) until ``predicate()`` holds, checking in a worker thread."""
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit:g} s: {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def guarding(guard: NetGuard):
    """``guard.run()`` as a task for the block, cancelled and awaited after it."""
    task = asyncio.create_task(guard.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.lab_local
def test_rule_route_and_nftables_changes_are_notified_and_close_ends_it():
    with thread_in_netns("atlt-tw-"):
        async def scenario() -> tuple[int, int, int, int]:
            seen = []
            watch = TamperWatch(lambda: seen.append(1))
            assert watch.start() is None
            try:
                counts = []
                for argv in (["ip", "rule", "add", "priority", "31000", "lookup", "100"],
                             ["ip", "-6", "route", "add", "unreachable", "default", "table", "100"],
                             ["nft", "add", "table", "inet", "atlt_probe"]):
                    before = len(seen)
                    await asyncio.to_thread(run, *argv)
                    await until(lambda: len(seen) > before, " ".join(argv))
                    counts.append(len(seen) - before)
            finally:
                watch.close()
            quiet = len(seen)
            await asyncio.to_thread(run, "nft", "delete", "table", "inet", "atlt_probe")
            await asyncio.sleep(0.3)
            return (*counts, len(seen) - quiet)

        rule, route, table, after_close = asyncio.run(scenario())
    assert rule >= 1 and route >= 1 and table >= 1
    assert after_close == 0


def test_a_failed_socket_ends_the_watch_and_says_why():
    """A netlink socket failing with anything but ENOBUFS ends the watch (the guard then
    polls); ENOBUFS (messages lost) is a change like any other."""
    class Failing:
        def __init__(self, code: int) -> None:
            self.code, self.calls = code, 0

        def recv(self, _n: int) -> bytes:
            self.calls += 1
            if self.calls == 1:
                raise OSError(self.code, "boom")
            raise BlockingIOError

        def fileno(self) -> int:
            return -1

        def close(self) -> None:
            pass

    changes = []
    watch = TamperWatch(lambda: changes.append(1))
    watch._readable(Failing(errno.ENOBUFS))
    assert changes == [1] and watch.broken is None
    watch._readable(Failing(errno.EBADF))
    assert changes == [1, 1] and watch.broken is not None and "failed" in watch.broken


@pytest.mark.lab_local
def test_the_guard_puts_back_what_a_flush_removed_on_the_notification_alone(caplog):
    with thread_in_netns("atlt-tw-"):
        run("ip", "link", "add", "atl0", "type", "veth", "peer", "name", "atl0p")
        run("ip", "link", "set", "atl0", "up")
        plan = routing.plan_routing("atl0", TABLE, MARK, PRIO, ipv6="captured", capture_dns=True)
        record = routing.prepare(plan)
        ks = killswitch.KillSwitchConfig(tun="atl0", fwmark=MARK, upstream=(killswitch.Endpoint("192.0.2.7", 3128),))
        tcp = redirect.RedirectConfig(tun="atl0", fwmark=MARK, port=40123)
        try:
            routing.apply(plan)
            killswitch.apply(ks)
            redirect.apply(tcp)
            guard = NetGuard(plan=plan, killswitch_config=ks, redirect_config=tcp, drain=lambda: None,
                             recheck_leaks=lambda: None, check_every=HOUR, safety_every=HOUR)

            async def scenario() -> dict:
                async with guarding(guard):
                    await until(lambda: guard.checks >= 1, "the first check")
                    assert guard.status()["notified"] is True
                    await asyncio.to_thread(run, "nft", "flush", "ruleset")
                    await until(lambda: killswitch.is_active() and redirect.is_active(), "the tables back")
                    await asyncio.to_thread(run, "ip", "rule", "del", "priority", str(PRIO))
                    await until(lambda: routing.missing(plan) == [], "the rule back")
                    return guard.status()

            with caplog.at_level(logging.WARNING, logger="atlantic"):
                status = asyncio.run(scenario())
        finally:
            redirect.remove()
            killswitch.remove()
            routing.restore(record)
    said = [r.getMessage() for r in caplog.records]
    assert any("kill switch table was removed" in m for m in said), said
    assert any(f"ip rule {PRIO}" in m for m in said), said
    assert status["repairs"] >= 3 and guard.watch is None  # closed with run()


def test_without_notifications_the_guard_polls_at_its_short_pace(monkeypatch, caplog):
    """TamperWatch cannot subscribe: one warning, and the check runs every ``check_every``."""
    monkeypatch.setattr(TamperWatch, "start", lambda self: "cannot subscribe to netlink notifications (test)")
    guard = NetGuard(plan=routing.plan_routing("atl0", TABLE, MARK, PRIO, ipv6="captured", capture_dns=True),
                     killswitch_config=None, drain=lambda: None, recheck_leaks=lambda: None,
                     check_every=0.05, safety_every=HOUR)
    monkeypatch.setattr(guard, "repair", lambda: [])

    async def scenario() -> dict:
        async with guarding(guard):
            await until(lambda: guard.checks >= 3, "three checks")
            return guard.status()

    with caplog.at_level(logging.WARNING, logger="atlantic"):
        status = asyncio.run(scenario())
    assert status["notified"] is False
    said = [r.getMessage() for r in caplog.records if "netlink notifications" in r.getMessage()]
    assert len(said) == 1 and f"every {netguard.CHECK_S:g} s" not in said[0] and "every 0.05 s" in said[0]


def test_a_storm_of_notifications_costs_at_most_one_check_a_second(monkeypatch):
    """Notifications 20 times a second for 1.5 s: the first is checked at once, the rest
    wait for the gap, so at most one check a second follows the first."""
    monkeypatch.setattr(TamperWatch, "start", lambda self: None)  # watching, as far as the guard knows
    guard = NetGuard(plan=routing.plan_routing("atl0", TABLE, MARK, PRIO, ipv6="captured", capture_dns=True),
                     killswitch_config=None, drain=lambda: None, recheck_leaks=lambda: None,
                     check_every=HOUR, safety_every=HOUR)
    monkeypatch.setattr(guard, "repair", lambda: [])

    async def scenario() -> tuple[int, float]:
        async with guarding(guard):
            await until(lambda: guard.checks >= 1, "the first check")
            t0 = time.monotonic()
            for _ in range(30):
                guard._wake.set()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return guard.checks, time.monotonic() - t0

    checks, elapsed = asyncio.run(scenario())
    assert 2 <= checks <= 2 + int(elapsed / netguard.MIN_GAP_S)
