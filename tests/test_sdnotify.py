"""sd_notify against real AF_UNIX datagram sockets: the exact datagrams systemd would read,
the watchdog cadence and its PID check, and silence outside systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import pytest
from atlantic.client import sdnotify
from atlantic.client.sdnotify import (
    Notifier,
    notify_address,
    one_line,
    watchdog_interval,
    watchdog_task,
)


@pytest.fixture
def receiver(tmp_path):
    """A datagram socket bound in tmp_path, as systemd's notify socket is; yields (sock, NOTIFY_SOCKET value)."""
    path = tmp_path / "notify"
    if len(str(path)) >= 107:
        pytest.skip(f"tmp_path too long for an AF_UNIX path: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_receiver():
    """The same in the abstract namespace (``@name``), which systemd uses in containers."""
    name = f"atlantic-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    yield sock, "@" + name
    sock.close()


def notifier_for(value: str, **extra: str) -> Notifier:
    return Notifier.from_environment({"NOTIFY_SOCKET": value, **extra}, pid=os.getpid())


def test_ready_status_stopping_watchdog_are_the_exact_datagrams(receiver):
    """Each call is one datagram of KEY=VALUE lines, exactly as sd_notify(3) writes them."""
    sock, value = receiver
    n = notifier_for(value)
    assert n.ready("up via atl0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up via atl0"
    assert n.status("3 flows")
    assert sock.recv(4096) == b"STATUS=3 flows"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping("draining 3 flows")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining 3 flows"
    n.close()


def test_reloading_carries_the_monotonic_time(receiver):
    """RELOADING=1 carries MONOTONIC_USEC (what Type=notify-reload matches against its SIGHUP)."""
    sock, value = receiver
    n = notifier_for(value)
    assert n.reloading("reloading config", monotonic_usec=123456789)
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading config"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1" and before <= int(fields["MONOTONIC_USEC"]) <= after
    n.close()


def test_abstract_socket(abstract_receiver):
    """``@name`` reaches the abstract-namespace socket of that name."""
    sock, value = abstract_receiver
    n = notifier_for(value)
    assert n.is_enabled() and n.address == "\0" + value[1:]
    assert n.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    n.close()


def test_status_is_one_bounded_line(receiver):
    """A newline in a status cannot smuggle a field (READY=1) in; long text is cut."""
    sock, value = receiver
    n = notifier_for(value)
    n.status("upstream said:\nREADY=1\r\n\tMAINPID=1\x00")
    assert sock.recv(4096) == b"STATUS=upstream said: READY=1 MAINPID=1"
    n.status("x" * 1000)
    got = sock.recv(4096)
    assert got == b"STATUS=" + b"x" * (sdnotify.MAX_STATUS_CHARS - 3) + b"..."
    assert one_line("a\u2028b  c") == "a b c"
    n.close()


def test_environment_is_read_once_and_unset():
    """NOTIFY_SOCKET and the watchdog variables are removed so children (nft) do not inherit them."""
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42", "PATH": "/bin"}
    n = Notifier.from_environment(env, pid=42)
    assert env == {"PATH": "/bin"}
    assert n.address == "/run/systemd/notify" and n.watchdog_interval() == 15.0


def test_default_environment_is_os_environ(monkeypatch, receiver):
    """Without an explicit mapping the process environment is read and cleaned."""
    sock, value = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier.from_environment()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.watchdog_interval() == 1.0
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    n.close()


@pytest.mark.parametrize(("usec", "wpid", "expected"), [
    ("30000000", "42", 15.0),   # for us: half the timeout
    ("30000000", None, 15.0),   # no WATCHDOG_PID: meant for whoever reads it
    ("30000000", "43", None),   # another process's watchdog (inherited)
    ("30000000", "x", None),
    (None, "42", None),
    ("", None, None),
    ("0", None, None),
    ("-5", None, None),
    ("abc", None, None),
])
def test_watchdog_interval(usec, wpid, expected):
    """Half of WATCHDOG_USEC, and only when WATCHDOG_PID (if set) is our PID."""
    assert watchdog_interval(usec, wpid, 42) == expected


def test_watchdog_pid_mismatch_disables_the_watchdog_but_not_notifications(receiver):
    """Inherited watchdog variables do not make a child ping in its parent's name."""
    _sock, value = receiver
    n = notifier_for(value, WATCHDOG_USEC="1000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert n.is_enabled() and n.watchdog_interval() is None


def test_no_socket_is_a_no_op(caplog):
    """Outside systemd every call does nothing, sends nothing and logs nothing."""
    n = Notifier.from_environment({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not n.is_enabled() and n.watchdog_interval() is None
    with caplog.at_level(logging.DEBUG, logger="atlantic"):
        assert not n.ready("up") and not n.status("s") and not n.stopping("s")
        assert not n.watchdog() and not n.reloading()
    assert caplog.records == []
    n.close()


@pytest.mark.parametrize("value", ["", "@", "relative/path", "vsock:2:1234"])
def test_unusable_addresses_are_ignored(value):
    """Only absolute paths and @abstract names are used; anything else disables notification."""
    assert notify_address(value) is None
    assert not notifier_for(value).is_enabled()


def test_send_failure_is_one_debug_line_not_an_exception(tmp_path, caplog):
    """systemd gone (no socket at the path): False and one debug line, never a raise."""
    n = notifier_for(str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="atlantic"):
        assert n.ready("up") is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("sd_notify: cannot send READY=1")
    n.close()


def test_a_full_queue_never_blocks(receiver):
    """When systemd does not read, sends fail at once (non-blocking) instead of stalling the loop."""
    sock, value = receiver
    n = notifier_for(value)
    results = [n.status(f"s{i}") for i in range(5000)]  # far beyond net.unix.max_dgram_qlen
    assert results[0] and not results[-1]
    assert sock.recv(4096) == b"STATUS=s0"
    n.close()


def test_watchdog_task_pings_until_cancelled(receiver):
    """The task pings from the loop at its interval and stops when cancelled."""
    sock, value = receiver
    sock.setblocking(False)
    n = notifier_for(value)

    async def scenario() -> int:
        task = asyncio.create_task(watchdog_task(n, 0.01))
        got = 0
        deadline = asyncio.get_running_loop().time() + 5.0
        while got < 3 and asyncio.get_running_loop().time() < deadline:
            try:
                assert sock.recv(4096) == b"WATCHDOG=1"
                got += 1
            except BlockingIOError:
                await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    assert asyncio.run(scenario()) == 3
    while True:  # drain what was sent before the cancel ...
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    time.sleep(0.05)  # ... and nothing comes after it
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    n.close()


def test_watchdog_task_refuses_a_bad_interval():
    """A zero or missing interval is a wiring mistake, not a busy loop of pings."""
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(watchdog_task(Notifier(), 0))
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(watchdog_task(Notifier(), None))


def test_repr_shows_where_it_notifies():
    """repr says off, or the socket (abstract as @name) and the watchdog interval."""
    assert repr(Notifier()) == "<Notifier off watchdog=None>"
    assert repr(Notifier("\0abc", 15.0)) == "<Notifier @abc watchdog=15.0>"
