"""SleepWatch (system/sleepwatch.py) against a real D-Bus daemon: a private
``dbus-daemon --session`` started here, and a small stand-in for logind that owns
org.freedesktop.login1 and emits PrepareForSleep on /org/freedesktop/login1. The client
code under test is the real one (jeepney over the bus socket); only logind is played.

Needs no root; the bus daemon is killed by its PID in a ``finally``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import subprocess

import pytest
from atlantic.system import sleepwatch
from atlantic.system.netchange import Kind
from atlantic.system.netwatch import NetWatch
from atlantic.system.sleepwatch import SleepWatch

jeepney = pytest.importorskip("jeepney")
from jeepney import DBusAddress, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.asyncio import Proxy, open_dbus_router

WAIT_S = 10.0
NOW = 100.0


@pytest.fixture
def bus_address():
    """A private session bus: its address, and the daemon killed by PID afterwards."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        pytest.skip("dbus-daemon is not installed")
    proc = subprocess.Popen([exe, "--session", "--print-address", "--nofork"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        assert ready, "dbus-daemon printed no address"
        address = proc.stdout.readline().decode().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        proc.stdout.close()


async def emit(router, going_to_sleep: bool) -> None:
    """PrepareForSleep(b) as logind sends it."""
    where = DBusAddress(sleepwatch.PATH, interface=sleepwatch.INTERFACE)
    await router.send(new_signal(where, sleepwatch.MEMBER, "b", (going_to_sleep,)))


async def until(predicate) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


def test_logind_resume_is_reported_as_a_major_change(bus_address, caplog):
    """PrepareForSleep(true) drains; PrepareForSleep(false) reaches NetWatch as a major
    change (the clock-jump path's tracker); the same signal from a client that does not own
    org.freedesktop.login1 is not heard."""
    watch = NetWatch(lambda change: None, tun="atl0", table=2026, clock=lambda: NOW)
    drained = []

    async def scenario() -> None:
        sw = SleepWatch(watch.resumed, lambda: drained.append(1), bus=bus_address)
        task = asyncio.create_task(sw.run())
        try:
            async with open_dbus_router(bus_address) as logind, open_dbus_router(bus_address) as impostor:
                async with asyncio.timeout(WAIT_S):
                    await sw.subscribed.wait()
                await emit(impostor, False)  # not logind: the bus does not deliver it
                reply = await Proxy(message_bus, logind).RequestName(sleepwatch.SENDER)
                assert reply == (1,)  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
                await emit(logind, True)
                await until(lambda: sw.suspends == 1)
                assert drained == [1] and sw.resumes == 0
                await emit(logind, False)
                await until(lambda: sw.resumes == 1)
            assert sw.connected
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="atlantic.system"):
        asyncio.run(scenario())
    assert watch.tracker.due(NOW) is None  # debounced like every change
    change = watch.tracker.due(NOW + 5)
    assert change is not None and change.kind is Kind.MAJOR
    assert change.reasons == ("resumed from suspend (logind)",)
    said = [r.getMessage() for r in caplog.records]
    assert any("listening to logind's PrepareForSleep" in m for m in said)
    assert any("woke up (logind)" in m for m in said)


def test_no_bus_is_one_info_line_and_the_watch_ends(tmp_path, caplog):
    """No bus at the address: run() returns at once after one info line (the clock jump stands in)."""
    sw = SleepWatch(lambda: None, bus=f"unix:path={tmp_path / 'none'}")
    with caplog.at_level(logging.INFO, logger="atlantic.system"):
        asyncio.run(asyncio.wait_for(sw.run(), WAIT_S))
    lines = [r for r in caplog.records if "suspend/resume" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "clock-jump check stands in" in lines[0].getMessage() and "\n" not in lines[0].getMessage()


def test_a_lost_bus_is_reconnected(tmp_path, monkeypatch, caplog):
    """The bus goes away after the watch subscribed: one info line, retries (the watch does
    not end), and a new subscription once a bus answers at the address again."""
    monkeypatch.setattr(sleepwatch, "RETRY_S", 0.05)
    sock = tmp_path / "bus"
    address = f"unix:path={sock}"
    procs: list[subprocess.Popen] = []

    def start_bus() -> None:
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen([shutil.which("dbus-daemon") or "dbus-daemon", "--session", f"--address={address}",
                                 "--print-address", "--nofork"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(proc)
        assert select.select([proc.stdout], [], [], WAIT_S)[0], "dbus-daemon printed no address"
        proc.stdout.readline()

    async def scenario() -> None:
        sw = SleepWatch(lambda: None, bus=address)
        task = asyncio.create_task(sw.run())
        try:
            async with asyncio.timeout(WAIT_S):
                await sw.subscribed.wait()
            os.kill(procs[0].pid, signal.SIGKILL)
            await until(lambda: not sw.subscribed.is_set())
            await asyncio.sleep(0.3)  # a few failed retries
            assert not task.done()
            start_bus()
            async with asyncio.timeout(WAIT_S):
                await sw.subscribed.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    try:
        start_bus()
        with caplog.at_level(logging.INFO, logger="atlantic.system"):
            asyncio.run(scenario())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
            proc.stdout.close()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "lost the D-Bus connection" in m]) == 1
    assert len([m for m in said if "listening to logind" in m]) == 2


def test_logind_and_the_clock_jump_of_one_resume_make_one_change():
    """Pure: the logind resume and the clock jump seen a tick later share one debounce window."""
    from atlantic.system.netchange import ChangeTracker

    t = ChangeTracker(tun="atl0", table=2026)
    t.tick(10.0, 1000.0)
    t.resumed(11.0)
    t.tick(12.0, 1600.0)  # 598 s of sleep
    change = t.due(20.0)
    assert change is not None and change.is_major
    assert change.reasons == ("resumed from suspend (logind)", "clock jumped +598 s (suspend/resume)")
    assert t.due(30.0) is None
