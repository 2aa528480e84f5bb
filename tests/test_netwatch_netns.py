"""NetWatch against the real kernel, in a throwaway namespace (``atlt-nw-*``, root only).

The watcher runs on its own event loop in a thread that entered the namespace (so its
netlink socket lives there); the test thread stays outside and changes the namespace
with ``ip -n NS -batch``, so each step reaches the kernel within milliseconds and must
come back as one debounced change. The namespace is deleted afterwards whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from typing import Self

import pytest
from atlantic_lab import lab_unavailable

from atlantic.lab.throwaway import inside
from atlantic.system import netwatch
from atlantic.system.netchange import Change, Kind
from atlantic.system.netwatch import NetWatch

TABLE = 2026
WAIT_S = 15.0  # generous: a change is due 1 s after its last event


def ip_batch(ns: str, *commands: str) -> None:
    """Run ``commands`` as one `ip -batch` inside ``ns`` (all within a few ms)."""
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n", text=True,
                   check=True, timeout=10, capture_output=True)


@pytest.fixture
def netns():
    """A fresh atlt-nw-<pid>-<hex> namespace with lo up, always deleted afterwards."""
    if shutil.which("ip") is None:
        lab_unavailable("needs ip (iproute2)")
    name = f"atlt-nw-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        ip_batch(name, "link set lo up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10, capture_output=True)


class Watcher:
    """A NetWatch on its own loop in a thread inside ``ns``; changes land in a queue."""

    def __init__(self, ns: str, **kw) -> None:
        self.ns, self.kw = ns, kw
        self.changes: queue.Queue[Change] = queue.Queue()
        self.watch: NetWatch | None = None
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="netwatch-test", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the watcher did not subscribe in time"
        assert self.failure is None, self.failure
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Cancel the watcher and join its thread (bounded)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the watcher did not stop when cancelled"

    def _main(self) -> None:
        try:
            with inside(self.ns):
                asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.failure = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.watch = NetWatch(self.changes.put, tun="atl0", table=TABLE, **self.kw)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(self.watch.run())
            await self.watch.ready.wait()
            self._ready.set()
            await self._stop.wait()
            task.cancel()

    def until(self, *reasons: str) -> list[Change]:
        """Changes as they come until every one of ``reasons`` was reported (bounded)."""
        seen: list[Change] = []
        end = time.monotonic() + WAIT_S
        while not all(any(r in c.reasons for c in seen) for r in reasons):
            try:
                seen.append(self.changes.get(timeout=max(0.01, end - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"waited {WAIT_S:g} s for {reasons}; got {[c.line() for c in seen]}")
        return seen


def change_with(changes: list[Change], reason: str) -> Change:
    return next(c for c in changes if reason in c.reasons)


lab_local = pytest.mark.lab_local  # root: its own namespace


@lab_local
def test_netwatch_reports_each_real_network_change_once(netns):
    """Uplink appears, the TUN and its table come and go unheard, the address changes,
    the uplink bounces: each step is one debounced change with its reasons."""
    with Watcher(netns) as w:
        ip_batch(netns, "link add v0 type veth peer name v0p", "link set v0 addrgenmode none",
                 "link set v0p addrgenmode none", "link set v0p up", "link set v0 up",
                 "addr add 10.9.0.2/24 dev v0", "addr add 2001:db8:9::2/64 dev v0 nodad",
                 "route add default via 10.9.0.1", "route add default via 2001:db8:9::1")
        up = ["link v0 up", "new address 10.9.0.2/24 on v0", "new address 2001:db8:9::2/64 on v0",
              "new default route via 10.9.0.1 dev v0", "new default route via 2001:db8:9::1 dev v0"]
        first = change_with(w.until(*up), up[0])
        assert first.kind is Kind.MAJOR and set(up) <= set(first.reasons), first.line()

        # Atlantic's own device, addresses and table: nothing, so the marker route is alone.
        ip_batch(netns, "tuntap add atl0 mode tun", "link set atl0 up", "addr add 10.7.0.1/30 dev atl0",
                 f"route add default dev atl0 table {TABLE}", "route add 10.50.0.0/16 via 10.9.0.1")
        marker = "new route 10.50.0.0/16 via 10.9.0.1 dev v0"
        assert w.until(marker)[-1] == Change(Kind.MINOR, (marker,))

        # A new lease: the old address goes (and the kernel drops the IPv4 default with it).
        ip_batch(netns, "addr del 10.9.0.2/24 dev v0", "addr add 10.9.0.7/24 dev v0",
                 "route add default via 10.9.0.1")
        lease = ["lost address 10.9.0.2/24 on v0", "new address 10.9.0.7/24 on v0",
                 "new default route via 10.9.0.1 dev v0"]
        changed = w.until(*lease)
        assert len(changed) == 1 and changed[0].kind is Kind.MAJOR
        assert [r for r in changed[0].reasons if r in lease] == lease

        ip_batch(netns, "link set v0 down", "link set v0 up")
        bounce = change_with(w.until("uplink v0 down (DOWN)", "uplink v0 up again"), "uplink v0 up again")
        assert bounce.kind is Kind.MAJOR and "uplink v0 down (DOWN)" in bounce.reasons
        assert "lost default route via 2001:db8:9::1 dev v0" in bounce.reasons  # IPv6 says so itself
        assert w.watch.errors == 0 and w.changes.empty()


@lab_local
def test_netwatch_reports_a_clock_jump_and_stops_when_cancelled(netns):
    """Boot time jumping an hour ahead of the monotonic clock (a suspend) is one MAJOR
    change, with no netlink event at all; cancelling stops the watcher promptly."""
    offset = [0.0]
    with Watcher(netns, tick=0.2, wall=lambda: time.monotonic() + offset[0]) as w:
        time.sleep(0.5)
        offset[0] = 3600.0
        (change,) = w.until("clock jumped +3600 s (suspend/resume)")
        assert change.kind is Kind.MAJOR
        started = time.monotonic()
        w.stop()
        assert time.monotonic() - started < 5.0


def test_netlink_failures_are_logged_once_a_minute(caplog):
    """A failing socket logs one line, then silence for a minute, then one line with the count."""
    now = [0.0]
    watch = NetWatch(lambda change: None, tun="atl0", table=TABLE, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="atlantic.system"):
        for t in (0.0, 1.0, 30.0, 59.0, 61.0):
            now[0] = t
            watch._log_error(OSError(105, "No buffer space available"))
    lines = [r.getMessage() for r in caplog.records]
    failed = "network monitor: netlink failed: [Errno 105] No buffer space available; reopening"
    assert lines == [failed, f"{failed} (3 more since the last report)"]


@lab_local
def test_a_failed_read_reopens_the_socket_and_reports_lost_events(netns, monkeypatch, caplog):
    """A message that breaks the reader: one log line, a fresh socket and dump, and a MAJOR
    change saying events were lost; changes after that are seen again."""
    real, broken = netwatch.events_from, []

    def events_from(msg):
        if msg.get_attr("IFA_LOCAL") == "10.9.0.66" and not broken:
            broken.append(msg)
            raise ValueError("cannot parse this message")
        return real(msg)

    monkeypatch.setattr(netwatch, "events_from", events_from)
    with caplog.at_level(logging.WARNING, logger="atlantic.system"), Watcher(netns) as w:
        ip_batch(netns, "link add v0 type veth peer name v0p", "link set v0 up",
                 "addr add 10.9.0.66/24 dev v0")
        (lost,) = w.until("netlink events lost: cannot parse this message")
        assert lost.kind is Kind.MAJOR
        ip_batch(netns, "addr add 10.9.0.67/24 dev v0")
        w.until("new address 10.9.0.67/24 on v0")
        assert w.watch.errors == 1
    assert [r.getMessage() for r in caplog.records if "netlink failed" in r.getMessage()] == [
        "network monitor: netlink failed: cannot parse this message; reopening"]
