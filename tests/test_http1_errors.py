"""Failures in the request relay: malformed requests, upstream errors, broken bodies."""

from __future__ import annotations

import asyncio

import pytest
from http1_peers import LoopbackPool, Origin, app_flow, read_response

from atlantic.pool.errors import (
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


async def exchange(pool_setup, data: bytes, *, bytewise: bool = False, method: str = "GET", first_bytes: bytes = b""):
    """Send ``data`` from the app, read one response and what follows; returns everything."""
    async with Origin() as origin:
        pool = LoopbackPool(origin.port)
        pool_setup(pool)
        notes: list[str] = []
        async with app_flow(pool, first_bytes=first_bytes) as (reader, writer, task, counters):
            if bytewise:
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(data)
            response = await read_response(reader, method)
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()  # as clients do on EOF; the relay's lingering close then ends at once
            await asyncio.wait_for(task, 5)
        await pool.aclose()
        return response, rest, task, counters, pool, notes


def no_failure(pool):
    """Leave the pool working."""


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost a\r\n\r\n",  # header without colon
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"GET https://secure.example/ HTTP/1.1\r\nHost: secure.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_request_gets_400_and_close(data, bytewise):
    """A malformed request gets 400 with a one-line reason, then the connection closes."""
    (status, headers, body, _), rest, task, counters, _, _ = run(exchange(no_failure, data, bytewise=bytewise))
    assert status == 400
    assert body.startswith(b"Atlantic: bad request: ") and body.count(b"\n") == 1
    assert headers["connection"] == "close" and rest == b""
    assert task.exception() is None and counters.bad_requests == 1


def test_malformed_second_request_after_a_good_one():
    """A good request is answered, then garbage on the same connection gets 400."""
    data = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\nNOT HTTP AT ALL\r\n\r\n"

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, counters):
                writer.write(data)
                first = await read_response(reader)
                second = await read_response(reader)
                writer.close()
                await asyncio.wait_for(task, 5)
            await pool.aclose()
            return first[0], second[0], task

    assert run(go())[:2] == (200, 400)


def test_oversized_head_gets_431():
    """A request head still incomplete past h11's 16 KiB limit gets h11's hinted status (431)."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n"
    (status, _, body, _), *_ = run(exchange(no_failure, data))
    assert status == 431 and body.startswith(b"Atlantic: bad request")


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (UpstreamAuthError("proxy http://u:***@p:3128 rejected the credentials (407 Proxy Authentication Required)", 407), 502,
         b"rejected Atlantic's credentials"),
        (UpstreamUnreachableError("proxy p:3128 unreachable: connection refused"), 502, b"unreachable"),
        (UpstreamTimeoutError("proxy p:3128 did not answer within 10 s"), 504, b"timed out"),
        (RemoteProtocolError("malformed status line 'HTTP/9'"), 502, b"broken response"),
    ],
)
def test_upstream_error_becomes_clear_response(exc, status, words):
    """An upstream failure before the head becomes 502/504 with a one-line plain-text reason."""

    def fail(pool):
        pool.fail_with = exc

    (got, headers, body, _), rest, task, counters, _, _ = run(exchange(fail, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert got == status and words in body and body.count(b"\n") == 1
    assert headers["content-type"].startswith("text/plain")
    assert task.exception() is None and counters.upstream_errors == 1


def test_unreachable_origin_via_real_connect_failure():
    """A pool that cannot connect at all yields 502 with the pool's reason."""

    async def go():
        pool = LoopbackPool(1)  # nothing listens on port 1
        async with app_flow(pool) as (reader, writer, task, _):
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            return await read_response(reader)

    status, _, body, _ = run(go())
    assert status == 502 and b"unreachable" in body


@pytest.mark.parametrize("target", ["/truncated", "/truncated?chunked=1"])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_failure_mid_body_is_never_a_complete_body(target, version):
    """An upstream that dies mid-body makes the app's connection fail (reset), not end cleanly."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, counters):
                writer.write(f"GET {target} HTTP/{version}\r\nHost: a\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                outcome = "clean-eof"
                try:
                    for _ in range(1000):
                        if not await reader.read(65536):
                            break
                except ConnectionResetError:
                    outcome = "reset"
                await asyncio.wait_for(task, 5)
            await pool.aclose()
            return head, outcome, counters

    head, outcome, counters = run(go())
    assert head.startswith(b"HTTP/1.1 200")
    assert outcome == "reset"
    assert counters.aborted == 1 and counters.upstream_errors == 1


def test_app_vanishing_mid_response_releases_the_upstream_connection():
    """An app that resets mid-body ends the flow without an exception; the pool closes that connection."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, sndbuf=65536) as (reader, writer, task, counters):
                writer.write(b"GET /sized?n=20000000 HTTP/1.1\r\nHost: a\r\n\r\n")
                await reader.readexactly(100000)
                writer.transport.abort()
                await asyncio.wait_for(task, 5)
            await pool.aclose()
            return task, counters, pool

    task, counters, pool = run(go())
    assert task.exception() is None
    assert pool.pulled < 20000000 and not pool.idle
