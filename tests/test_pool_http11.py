"""HTTP/1.1 through the pool against small real peers on loopback (h11 servers, scripted bytes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import h11
import pytest

from atlantic.pool.errors import (
    RemoteProtocolError, UpstreamAuthError, UpstreamUnreachableError,
)
from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.pool import UpstreamPool

TIMEOUT = 10


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serve(handler):
    """A loopback server running ``handler(reader, writer)`` per connection; yields its port."""
    conns: list[asyncio.StreamWriter] = []

    async def wrapped(r, w):
        conns.append(w)
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], conns
    finally:
        server.close()
        for w in conns:
            w.transport.abort()


def h11_app(body_for, *, close_after: int | None = None, seen: list | None = None):
    """An h11 keep-alive server; ``body_for(request) -> bytes``; closes after N requests."""
    async def handler(r, w):
        conn = h11.Connection(h11.SERVER)
        served = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await r.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                if seen is not None:
                    seen.append(event)
                continue
            if isinstance(event, h11.Data):
                continue
            if isinstance(event, h11.EndOfMessage):
                req = seen[-1] if seen else None
                body = body_for(req)
                w.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])))
                w.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await w.drain()
                served += 1
                if close_after is not None and served >= close_after:
                    return
                conn.start_next_cycle()
                continue
            return
    return handler


def get(port: int, path: str = "/", method: str = "GET", body_length: int | None = 0) -> RequestHead:
    ep = Endpoint("http", "127.0.0.1", port)
    return RequestHead(method, ep, path, (("Host", ep.authority), ("User-Agent", "t")), body_length)


async def fetch(pool: UpstreamPool, head: RequestHead, body=None) -> tuple[int, bytes]:
    resp = await pool.request(head, body)
    chunks = []
    while piece := await resp.read():
        chunks.append(piece)
    await resp.aclose()
    return resp.head.status, b"".join(chunks)


def test_sequential_requests_reuse_one_keepalive_connection():
    """Five sequential GETs (direct) ride one connection: opened 1, reused 4; repr shows it idle."""
    async def main():
        seen: list = []
        async with serve(h11_app(lambda req: b"x" * 100_000, seen=seen)) as (port, _):
            async with UpstreamPool("direct") as pool:
                for _ in range(5):
                    status, body = await fetch(pool, get(port, "/a"))
                    assert status == 200 and len(body) == 100_000
                c = pool.counters()
                assert (c["requests"], c["connections_opened"], c["reused"]) == (5, 1, 4)
                assert repr(pool) == "<Pool [requests: 0 active, 0 queued | connections: 0 active, 1 idle]>"
                assert seen[0].target == b"/a"  # origin-form for direct
    run(main())


def test_partly_read_response_closes_the_connection():
    """aclose() before the body ends closes the connection; the next request opens a new one."""
    async def main():
        async with serve(h11_app(lambda req: b"y" * 2_000_000)) as (port, _):
            async with UpstreamPool("direct") as pool:
                resp = await pool.request(get(port), None)
                assert resp.head.body_length == 2_000_000
                await resp.read(1000)
                await resp.aclose()
                assert repr(pool).endswith("connections: 0 active, 0 idle]>")
                await fetch(pool, get(port))
                assert pool.counters()["connections_opened"] == 2
    run(main())


def test_idle_connection_closed_by_peer_is_not_reused():
    """A keep-alive connection the server closed while idle is detected and replaced, no retry."""
    async def main():
        async with serve(h11_app(lambda req: b"ok", close_after=1)) as (port, _):
            async with UpstreamPool("direct") as pool:
                await fetch(pool, get(port))
                await asyncio.sleep(0.1)  # the FIN arrives while the connection is idle
                assert (await fetch(pool, get(port)))[1] == b"ok"
                c = pool.counters()
                assert c["connections_opened"] == 2 and c["retries"] == 0 and c["reused"] == 0
    run(main())


def _closes_after_reading_second_request():
    state = {"n": 0}

    async def handler(r, w):
        # first connection: answer one request, then read the next one and close without a byte
        state["n"] += 1
        conn_no = state["n"]
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await r.read(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                if conn_no == 1 and conn.their_state is h11.DONE and state.get("served"):
                    w.transport.abort()
                    return
                state["served"] = True
                w.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")])))
                w.write(conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))
                await w.drain()
                conn.start_next_cycle()
    return handler


def test_idempotent_request_is_retried_once_when_reused_connection_dies_under_it():
    """GET on a reused connection closed before any response byte: retried on a fresh one."""
    async def main():
        async with serve(_closes_after_reading_second_request()) as (port, _):
            async with UpstreamPool("direct") as pool:
                await fetch(pool, get(port))
                assert (await fetch(pool, get(port)))[1] == b"ok"
                c = pool.counters()
                assert c["retries"] == 1 and c["connections_opened"] == 2
    run(main())


def test_non_idempotent_request_is_not_retried():
    """POST meeting the same closed connection fails with one clear RemoteProtocolError."""
    async def main():
        async with serve(_closes_after_reading_second_request()) as (port, _):
            async with UpstreamPool("direct") as pool:
                await fetch(pool, get(port))

                async def body():
                    yield b"abc"
                with pytest.raises(RemoteProtocolError, match="closed") as e:
                    await fetch(pool, get(port, method="POST", body_length=3), body())
                assert "\n" not in str(e.value) and pool.counters()["retries"] == 0
    run(main())


def scripted(response: bytes, *, byte_at_a_time: bool = True, requests: list | None = None):
    """A peer that reads one request head and answers with ``response`` (1 byte per write)."""
    async def handler(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        if requests is not None:
            requests.append(head)
        for i in range(len(response)) if byte_at_a_time else [None]:
            w.write(response[i:i + 1] if i is not None else response)
            await w.drain()
        await asyncio.sleep(0.5)
    return handler


def test_chunked_response_fed_one_byte_at_a_time():
    """A chunked response with 1xx first, delivered byte by byte, yields the exact body."""
    resp = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\nX-A: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def main():
        async with serve(scripted(resp)) as (port, _):
            async with UpstreamPool("direct") as pool:
                r = await pool.request(get(port), None)
                assert r.head.body_length is None
                assert ("X-A", "1") in r.head.headers
                assert all(n.lower() not in ("transfer-encoding", "connection") for n, _ in r.head.headers)
                data = b""
                while piece := await r.read():
                    data += piece
                assert data == b"hello world"
                assert repr(pool).endswith("connections: 0 active, 1 idle]>")
    run(main())


def test_connection_close_response_is_not_kept():
    """`Connection: close` from the server: the connection is not returned to the pool."""
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False)) as (port, _):
            async with UpstreamPool("direct") as pool:
                assert await fetch(pool, get(port)) == (200, b"ok")
                assert repr(pool).endswith("connections: 0 active, 0 idle]>")
    run(main())


def test_http_proxy_gets_absolute_form_with_proxy_authorization():
    """Through an HTTP proxy: absolute-form target, Host, ready-made Proxy-Authorization."""
    requests: list[bytes] = []
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False, requests=requests)) as (port, _):
            async with UpstreamPool(f"http://u:p%40ss@127.0.0.1:{port}") as pool:
                head = RequestHead("GET", Endpoint("http", "origin.test", 80), "/x?y=1",
                                   (("Host", "origin.test"), ("Connection", "keep-alive")))
                assert (await fetch(pool, head))[0] == 200
        text = requests[0].decode()
        assert text.startswith("GET http://origin.test/x?y=1 HTTP/1.1\r\n")
        auth = base64.b64encode(b"u:p@ss").decode()
        assert f"Proxy-Authorization: Basic {auth}" in text and "origin.test" in text
        assert text.lower().count("host:") == 1 and "Connection: keep-alive" not in text
    run(main())


def test_407_from_http_proxy_raises_auth_error():
    """A 407 on a proxied request raises UpstreamAuthError, one line, password redacted."""
    resp = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False)) as (port, _):
            async with UpstreamPool(f"http://u:secret@127.0.0.1:{port}") as pool:
                with pytest.raises(UpstreamAuthError) as e:
                    await pool.request(get(80), None)
                assert "secret" not in str(e.value) and "\n" not in str(e.value)
    run(main())


def test_unreachable_upstream_is_one_clear_line():
    """Nothing listening: UpstreamUnreachableError naming the proxy, one line."""
    async def main():
        async with serve(scripted(b"")) as (port, _):
            pass  # closed again: the port is now free
        async with UpstreamPool(f"http://u:secret@127.0.0.1:{port}") as pool:
            with pytest.raises(UpstreamUnreachableError, match="cannot connect") as e:
                await pool.request(get(80), None)
            assert "secret" not in str(e.value)
    run(main())


def test_response_body_is_pulled_not_read_ahead():
    """Backpressure: while nobody reads the body, the server is held back (bounded buffering)."""
    total = 256 * 1024 * 1024
    sent = {"n": 0}

    async def handler(r, w):
        await r.readuntil(b"\r\n\r\n")
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        chunk = b"z" * 1024 * 1024
        while sent["n"] < total:
            w.write(chunk)
            await w.drain()
            sent["n"] += len(chunk)

    async def main():
        async with serve(handler) as (port, _):
            async with UpstreamPool("direct") as pool:
                resp = await pool.request(get(port), None)
                await resp.read()
                await asyncio.sleep(0.5)
                assert sent["n"] < 64 * 1024 * 1024
                await resp.aclose()
    run(main())


def test_empty_body_response_is_reused_without_a_read():
    """A response with no body (Content-Length: 0) released by aclose() alone stays in the pool."""
    async def main():
        async with serve(h11_app(lambda req: b"")) as (port, _):
            async with UpstreamPool("direct") as pool:
                resp = await pool.request(get(port), None)
                assert resp.head.body_length == 0
                await resp.aclose()
                assert repr(pool).endswith("connections: 0 active, 1 idle]>")
                await fetch(pool, get(port))
                assert pool.counters()["reused"] == 1
    run(main())
