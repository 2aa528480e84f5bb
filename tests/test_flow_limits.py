"""Limits that keep hostile or merely numerous applications from hurting the daemon
(issue 14): the descriptor limit, a cap on open flows, a deadline for a request head,
and failures logged once a minute per kind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket

from dispatch_peers import client_hello, dispatching, echo_server, to
from http1_peers import LoopbackPool, Origin, read_response

from atlantic.forwarder.dispatch import FDS_PER_FLOW, Dispatcher, default_max_flows, raise_nofile_limit
from atlantic.forwarder.http1 import HttpCounters, serve_http
from atlantic.pool.upstream import parse_upstream


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds (only so that a hang fails, never a timing)."""
    return asyncio.run(asyncio.wait_for(coro, limit))


@contextlib.contextmanager
def nofile(soft: int):
    """RLIMIT_NOFILE's soft limit at ``soft`` for a while, then as it was."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield before[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# ---- descriptors ----

def test_raise_nofile_limit_raises_the_soft_limit_within_the_hard_one():
    """raise_nofile_limit lifts the soft limit to min(hard, wanted) and reports (soft, hard)."""
    with nofile(256) as hard:
        assert raise_nofile_limit(300) == (300, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard + 1000 if hard != resource.RLIM_INFINITY else 4096
        assert raise_nofile_limit(wanted) == (min(hard, wanted), hard)


def test_raise_nofile_limit_never_lowers_it():
    """Asking for less than the soft limit leaves it as it is."""
    with nofile(512) as hard:
        assert raise_nofile_limit(100) == (512, hard)


def test_default_max_flows_leaves_room_for_the_daemon():
    """The derived flow limit times the descriptors per flow stays below the descriptor limit, with room to spare."""
    for soft in (64, 256, 1024, 20000):
        flows = default_max_flows(soft)
        assert flows >= 1 and flows * FDS_PER_FLOW < soft
        assert soft - flows * FDS_PER_FLOW >= min(256, soft // 2)
    assert default_max_flows(20000) > default_max_flows(1024)
    assert 20000 - default_max_flows(20000, reserve=4096 + 64) * FDS_PER_FLOW >= 4096 + 64


# ---- the flow cap ----

async def until(predicate, steps: int = 500) -> None:
    """Let the loop run until ``predicate()`` holds (bounded)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def tunnel(port: int):
    """A tunnelled flow through the dispatcher, proven up by one echoed ClientHello."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(client_hello())
    await r.readexactly(len(client_hello()))
    return r, w


async def ended_by_reset(r: asyncio.StreamReader) -> bool:
    """True if the connection ends with a reset (not data, not a clean EOF)."""
    try:
        return await r.read() is None
    except ConnectionResetError:
        return True


def test_flows_beyond_max_flows_are_reset_at_once_counted_and_shown(caplog):
    """With max_flows open, a new flow is reset at once, counted, logged once with the limit; one ending makes room."""

    async def main():
        async with echo_server() as echo, dispatching(to(echo), max_flows=2) as (d, port):
            first, second = await tunnel(port), await tunnel(port)
            refused = []
            for _ in range(3):
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionResetError:  # reset before this loop saw its connect complete
                    refused.append(True)
                    continue
                refused.append(await ended_by_reset(r))
                w.close()
            status = d.counters()
            first[1].close()
            await until(lambda: d.flows_open == 1)
            third = await tunnel(port)  # room again
            for _, w in (second, third):
                w.close()
            return refused, status

    with caplog.at_level(logging.WARNING, logger="atlantic"):
        refused, status = run(main())
    assert refused == [True] * 3
    assert status["flows_refused"] == 3 and status["flows_open"] == 2 and status["limits"]["max_flows"] == 2
    assert status["last_error"]["message"].startswith("too many flows: 2 open, limit 2 (daemon.max_flows)")
    assert status["last_error"]["count"] == 3
    assert len([r for r in caplog.records if "too many flows" in r.getMessage()]) == 1


def test_an_accept_without_descriptors_is_noted_then_accepting_resumes(caplog):
    """Out of descriptors at accept (EMFILE): one line, accepting backs off (0.1 s), and the
    connection waiting in the backlog is served once descriptors are free again."""

    async def main():
        async with echo_server() as echo, dispatching(to(echo), max_flows=1000) as (d, port):
            client = socket.socket()
            client.setblocking(False)
            lowest_free = os.open("/dev/null", os.O_RDONLY)  # the kernel gives the lowest free number
            os.close(lowest_free)
            with nofile(lowest_free):  # no descriptor left for anything new in this process
                with contextlib.suppress(BlockingIOError):
                    client.connect(("127.0.0.1", port))  # the kernel completes it: it waits in the backlog
                await until(lambda: any(k.startswith("accept failed") for k in d.errors))
                assert d.flows_total == 0
            await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
            r, w = await asyncio.open_connection(sock=client)
            w.write(client_hello())
            echoed = await r.readexactly(len(client_hello()))
            w.close()
            return echoed, d.flows_total

    with caplog.at_level(logging.WARNING, logger="atlantic"):
        echoed, total = run(main())
    assert echoed == client_hello() and total == 1
    assert [r.getMessage() for r in caplog.records if "accept failed" in r.getMessage()] == \
        ["accept failed: Too many open files"]


def test_status_shows_the_limits_derived_from_the_descriptor_limit():
    """Without max_flows the Dispatcher derives it from RLIMIT_NOFILE, and status shows the limits in force."""

    async def main():
        async with echo_server() as echo:
            with nofile(1024):
                async with dispatching(to(echo), head_timeout=12.5) as (d, _):
                    return d.counters()

    limits = run(main())["limits"]
    assert limits["max_flows"] == default_max_flows(1024)
    assert limits["open_files"] == 1024 and limits["head_timeout_s"] == 12.5
    assert limits["open_files_hard"] == -1 or limits["open_files_hard"] >= 1024


# ---- the request head deadline (slowloris) ----

@contextlib.asynccontextmanager
async def served(pool, head_timeout: float, *, idle_timeout: float = 10.0):
    """An application connection (reader, writer) served by serve_http with ``head_timeout``;
    yields (reader, writer, task, counters)."""
    counters = HttpCounters()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    connect = asyncio.ensure_future(asyncio.open_connection(*listener.getsockname()))
    sock, _ = await asyncio.get_running_loop().sock_accept(listener)
    reader, writer = await connect
    listener.close()
    sock.setblocking(False)
    task = asyncio.create_task(serve_http(sock, b"", ("10.0.0.1", 80), pool, counters=counters,
                                          idle_timeout=idle_timeout, head_timeout=head_timeout))
    try:
        yield reader, writer, task, counters
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def trickle(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    """Write ``data`` a byte at a time, ``pause`` seconds apart (a slow client)."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(pause)


def test_a_request_head_that_never_completes_gets_408_and_close():
    """A client that keeps sending header bytes but never ends the head gets 408 and a close, counted."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with served(pool, head_timeout=0.3) as (reader, writer, task, counters):
                slow = asyncio.create_task(trickle(writer, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 500, 0.02))
                status, headers, body, _ = await read_response(reader)
                rest = await asyncio.wait_for(reader.read(), 10)
                slow.cancel()
            return status, headers, body, rest, counters, pool

    status, headers, body, rest, counters, pool = run(go())
    assert status == 408 and headers["connection"] == "close" and rest == b""
    assert body.startswith(b"Atlantic: bad request: the request head was not complete within 0.3 s")
    assert counters.head_timeouts == 1 and not pool.heads


def test_head_deadline_spares_slow_bodies_and_idle_keep_alive():
    """The deadline covers a head only: a body slower than it, and a pause between requests, are served."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with served(pool, head_timeout=0.2) as (reader, writer, task, counters):
                writer.write(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
                await trickle(writer, b"slow payload", 0.05)
                first = await read_response(reader)
                await asyncio.sleep(0.4)  # idle between requests: the deadline starts at the next byte
                writer.write(b"GET /count HTTP/1.1\r\nHost: a\r\n\r\n")
                second = await read_response(reader)
            return first, second, counters

    first, second, counters = run(go())
    assert (first[0], first[2], second[0]) == (200, b"12", 200) and counters.head_timeouts == 0


def test_dispatcher_applies_its_head_timeout_to_http_flows():
    """A Dispatcher's head_timeout reaches its HTTP flows: a stalled head gets 408, counted in status."""

    async def go():
        async with echo_server() as echo, dispatching(to(echo), head_timeout=0.3) as (d, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and then nothing
            status = (await read_response(r))[0]
            w.close()
            await until(lambda: d.flows_open == 0)
            return status, d.counters()

    status, counters = run(go())
    assert status == 408 and counters["http"]["head_timeouts"] == 1


# ---- one log line per kind of failure per minute ----

def test_note_error_logs_one_line_per_kind_and_keeps_the_latest_detail(caplog):
    """Failures of one kind naming many destinations log one line; status shows the latest one and the count."""

    async def go():
        d = Dispatcher(parse_upstream("direct"), lambda port: None, LoopbackPool(1), idle_timeout=5.0, max_flows=10)
        for i in range(100):
            d.note_error(f"proxy p:3128 refused CONNECT site{i}.test:443 (403 Forbidden)", "tunnel: UpstreamRefusedError 403")
        return d.counters(), len(d.errors)

    with caplog.at_level(logging.DEBUG, logger="atlantic"):
        status, kinds = run(go())
    assert kinds == 1 and len(caplog.records) == 1
    assert status["last_error"]["count"] == 100 and "site99.test" in status["last_error"]["message"]


def test_note_error_keeps_hostile_text_on_one_line(caplog):
    """A message carrying CR, LF or escape characters (from a request) is logged as one line, escaped."""

    async def go():
        d = Dispatcher(parse_upstream("direct"), lambda port: None, LoopbackPool(1), idle_timeout=5.0, max_flows=10)
        d.note_error("bad Host evil\r\nFAKE LOG LINE\x1b[31m" + "x" * 5000)

    with caplog.at_level(logging.DEBUG, logger="atlantic"):
        run(go())
    (record,) = caplog.records
    text = record.getMessage()
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and len(text) < 1000


def test_a_bug_meeting_many_flows_is_one_kind(caplog):
    """Flows failing on the same bug, each message naming its own port, count as one kind: one log line."""

    async def main():
        def lookup(nat_port):
            raise RuntimeError(f"no entry for port {nat_port}")

        async with echo_server() as echo, dispatching(to(echo)) as (d, port):
            d.lookup = lookup
            for _ in range(4):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                await ended_by_reset(r)
                w.close()
            await until(lambda: d.flows_open == 0)
            return d

    with caplog.at_level(logging.WARNING, logger="atlantic"):
        d = run(main())
    assert d.flows_failed == 4 and len(d.errors) == 1
    (record,) = [r for r in caplog.records if "RuntimeError" in r.getMessage()]
    assert record.exc_info is None
