"""The pool's HTTP/1.1 connections on the wire (pool/http11.py over pool/h1wire.py): what
h11 did for the common path and its edges, byte for byte, against scripted loopback peers."""

from __future__ import annotations

import asyncio

import pytest
from test_pool_http11 import fetch, get, run, scripted, serve

from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.errors import LocalProtocolError, RemoteProtocolError
from atlantic.pool.http11 import request_bytes
from atlantic.pool.pool import UpstreamPool


def test_request_bytes_are_exact_and_frame_the_body():
    """Host first, hop-by-hop and framing headers replaced, Content-Length or chunked from body_length."""
    head = RequestHead("POST", Endpoint("http", "a.test", 8080), "/p?q=1",
                       (("Host", "x"), ("Connection", "close"), ("Content-Length", "9"), ("X-A", "1")), 3)
    data, framing = request_bytes(head, "Basic dTpw", absolute_form=True)
    assert data == (b"POST http://a.test:8080/p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nX-A: 1\r\n"
                    b"Content-Length: 3\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
    assert framing.data(b"abc") == b"abc" and framing.end() == b""
    chunked, framing = request_bytes(RequestHead("PUT", Endpoint("http", "a.test", 80), "/", (), None), None,
                                     absolute_form=False)
    assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n") and framing.data(b"hi") == b"2\r\nhi\r\n"


@pytest.mark.parametrize("value", ["a\r\nX-Smuggled: 1", " padded", "snow \u2603"])
def test_unwritable_request_is_a_local_error_before_any_byte(value):
    """A value h11 would refuse (a line break, blanks at an end, beyond Latin-1) is LocalProtocolError, one line."""
    head = RequestHead("GET", Endpoint("http", "a.test", 80), "/", (("X-V", value),), 0)
    with pytest.raises(LocalProtocolError) as caught:
        request_bytes(head, None, absolute_form=False)
    assert "\n" not in str(caught.value) and str(caught.value).isascii()


def test_head_response_with_length_has_no_body_and_is_reused():
    """A HEAD answer's Content-Length describes the GET: no body is awaited, the connection stays."""
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False)) as (port, _):
            async with UpstreamPool("direct") as pool:
                r = await pool.request(get(port, method="HEAD"), None)
                assert r.head.body_length == 0 and ("Content-Length", "1000") in r.head.headers
                assert await r.read() == b""
                assert repr(pool).endswith("connections: 0 active, 1 idle]>")
    run(main())


def test_close_delimited_response_reads_to_eof_and_is_not_reused():
    """An HTTP/1.0 answer without a length: the body is everything until EOF; the connection is closed."""
    resp = b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil the end"

    async def main():
        async with serve(scripted(resp)) as (port, _):
            async with UpstreamPool("direct") as pool:
                assert await fetch(pool, get(port)) == (200, b"until the end")
                assert repr(pool).endswith("connections: 0 active, 0 idle]>")
    asyncio.run(asyncio.wait_for(main(), 10))


def test_bytes_past_the_response_keep_the_connection_out_of_the_pool():
    """Unasked-for bytes after a complete response: its framing cannot be trusted, the connection closes."""
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False)) as (port, _):
            async with UpstreamPool("direct") as pool:
                assert await fetch(pool, get(port)) == (200, b"ok")
                assert repr(pool).endswith("connections: 0 active, 0 idle]>")
    run(main())


def test_repeated_identical_lengths_are_one_length():
    """``Content-Length: 2, 2`` is one length (h11 folded it too): body_length 2."""
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"

    async def main():
        async with serve(scripted(resp)) as (port, _):
            async with UpstreamPool("direct") as pool:
                r = await pool.request(get(port), None)
                assert r.head.body_length == 2 and await r.read() == b"ok" and await r.read() == b""
    run(main())


@pytest.mark.parametrize("resp", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
])
def test_broken_response_heads_are_one_line_remote_errors(resp):
    """A response head h11 would reject is RemoteProtocolError naming the peer, one ASCII line."""

    async def main():
        async with serve(scripted(resp)) as (port, _):
            async with UpstreamPool("direct") as pool:
                with pytest.raises(RemoteProtocolError, match="broke HTTP/1.1") as caught:
                    await pool.request(get(port), None)
                assert "\n" not in str(caught.value) and str(caught.value).isascii()
    run(main())


def test_broken_chunk_mid_body_is_a_remote_error():
    """A broken chunk after a good head: read() raises RemoteProtocolError and the connection is dropped."""
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX"

    async def main():
        async with serve(scripted(resp, byte_at_a_time=False)) as (port, _):
            async with UpstreamPool("direct") as pool:
                r = await pool.request(get(port), None)
                assert await r.read() == b"ok"
                with pytest.raises(RemoteProtocolError, match="CRLF"):
                    await r.read()
                assert repr(pool).endswith("connections: 0 active, 0 idle]>")
    run(main())
