"""The request relay's own bytes on the wire (no h11 on the common path): exact response
heads, framing as h11 chose it, one write for a small response, pipelining bytewise."""

from __future__ import annotations

import asyncio

import pytest
from http1_peers import LoopbackPool, Origin, app_flow, read_response

from atlantic.forwarder.http1_heads import response_bytes
from atlantic.pool.h1wire import WireError
from atlantic.pool.pool import UpstreamPool


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


async def raw_exchange(data: bytes, *, bytewise: bool = False) -> bytes:
    """``data`` from the application; everything the relay sends back until it closes."""
    async with Origin() as origin:
        pool = LoopbackPool(origin.port)
        async with app_flow(pool) as (reader, writer, task, _):
            for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            got = await asyncio.wait_for(reader.read(), 10)
        await pool.aclose()
    return got


def test_small_response_bytes_are_exact_and_close_when_asked():
    """A Content-Length response: status line, end-to-end headers, Connection: close for a closing client, the body."""
    got = run(raw_exchange(b"GET /sized?n=10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert got == (b"HTTP/1.1 200 \r\nX-Origin: yes\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
                   + bytes(range(10)))


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_pipelined_get_head_and_chunked_answers_in_order(bytewise):
    """GET, HEAD and a chunked GET pipelined (bytewise too): three framed answers in order, then the close."""
    data = (b"GET /sized?n=3 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD /chunked?n=5 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /chunked?n=5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    got = run(raw_exchange(data, bytewise=bytewise))
    first, rest = got.split(b"\r\n\r\n", 1)
    assert first.endswith(b"Content-Length: 3") and rest.startswith(b"\x00\x01\x02HTTP/1.1 200 ")
    head_answer, chunked = rest[3:].split(b"\r\n\r\n", 1)
    assert head_answer.endswith(b"Transfer-Encoding: chunked")  # h11's choice for HEAD of unknown length
    assert chunked.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" in chunked
    assert chunked.endswith(b"\r\n5\r\n\x00\x01\x02\x03\x04\r\n0\r\n\r\n")


def test_http10_client_without_length_gets_the_body_until_close():
    """HTTP/1.0 and no length: no chunked coding, Connection: close, the body ends with the connection."""
    got = run(raw_exchange(b"GET /chunked?n=4 HTTP/1.0\r\nHost: a\r\n\r\n"))
    head, body = got.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and head.endswith(b"Connection: close") and body == b"\x00\x01\x02\x03"


def test_a_small_response_is_one_write(monkeypatch):
    """Head and a small body the pool already received go to the application in one write."""
    from atlantic.forwarder.appconn import SocketConn

    writes: list[bytes] = []
    real = SocketConn.sendall

    async def counted(self, data):
        writes.append(bytes(data))
        await real(self, data)

    monkeypatch.setattr(SocketConn, "sendall", counted)

    async def go():
        async with Origin() as origin:  # /echo: head and body in one segment
            async with UpstreamPool("direct", warm_tunnels=0) as pool:
                async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, task, _):
                    writer.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    return await asyncio.wait_for(reader.read(), 10)

    got = run(go())
    assert len(writes) == 1 and writes[0] == got and got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"}")


@pytest.mark.parametrize(("status", "method", "version", "headers", "framing", "keep_alive"), [
    (200, "GET", "1.1", [("Content-Length", "5")], (5, False), True),
    (200, "GET", "1.1", [], (None, True), True),
    (200, "GET", "1.0", [], (None, False), False),
    (200, "HEAD", "1.1", [], (0, False), True),
    (200, "HEAD", "1.1", [("Content-Length", "5")], (0, False), True),
    (204, "GET", "1.1", [], (0, False), True),
    (304, "GET", "1.1", [("Content-Length", "7")], (0, False), True),
])
def test_response_bytes_frame_as_h11_does(status, method, version, headers, framing, keep_alive):
    """Content-Length, else chunked (1.1) or until close (1.0); none for HEAD/204/304; the head says so."""
    data, writer, alive = response_bytes(status, "OK", list(headers), method=method, http_version=version,
                                         keep_alive=version == "1.1")
    assert (writer.length, writer.chunked) == framing and alive is keep_alive
    assert (b"Transfer-Encoding: chunked\r\n" in data) == (not headers and version == "1.1" and status == 200)
    assert (b"Connection: close\r\n" in data) == (not keep_alive)
    assert data.startswith(b"HTTP/1.1 %d OK\r\n" % status) and data.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(("status", "reason", "headers"), [
    (101, "Switching", []),
    (200, "OK", [("X-Bad", " leading blank")]),
    (200, "OK", [("X-Bad", "a\r\nSet-Cookie: smuggled=1")]),
    (200, "OK\r\nX: y", []),
])
def test_response_heads_that_cannot_be_written_are_refused(status, reason, headers):
    """A status, reason or header h11 would refuse to write is a WireError (the relay answers 502)."""
    with pytest.raises(WireError):
        response_bytes(status, reason, list(headers), method="GET", http_version="1.1", keep_alive=True)


def test_non_latin1_reason_is_replaced_not_fatal():
    """A reason phrase beyond Latin-1 (from an HTTP/2 peer's library) is written with '?', as before."""
    data, _, _ = response_bytes(200, "caf\u00e9 \u2603", [], method="HEAD", http_version="1.1", keep_alive=True)
    assert data.startswith(b"HTTP/1.1 200 caf\xe9 ?\r\n")
