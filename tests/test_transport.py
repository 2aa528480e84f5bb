"""pool/transport.py on loopback: opening, the peer-closed check, abort, splice_to, detach, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl

import pytest

from test_pool_h2 import pki, run  # noqa: F401 - pki is a fixture the TLS test uses
from test_pool_splice import app_pair, receive

from atlantic.pool.errors import UpstreamUnreachableError
from atlantic.pool.splice import RelayEnd
from atlantic.pool.transport import READ_LIMIT, SocketStream, Transport, open_transport


@contextlib.asynccontextmanager
async def server(handler, ssl_context: ssl.SSLContext | None = None):
    """``handler(reader, writer)`` behind a loopback listener; yields the port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(r, w):
        writers.append(w)
        # CancelledError: the test ended first (loop shutdown), end quietly
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
            await handler(r, w)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for w in writers:
            w.transport.abort()


async def connect(port: int, **kw) -> Transport:
    """A transport to 127.0.0.1:``port``."""
    return await open_transport("127.0.0.1", port, now=0.0, what="origin", **kw)


async def until(predicate, steps: int = 500) -> None:
    """Let the loop run until ``predicate()`` holds (bounded)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def read_exactly(t: Transport, n: int) -> bytes:
    """``n`` bytes from ``t`` (fewer only at EOF)."""
    data = bytearray()
    while len(data) < n and (piece := await t.read(n - len(data))):
        data += piece
    return bytes(data)


def test_open_transport_connects_and_carries_bytes_both_ways():
    """A plain loopback connection: no ALPN, plain TCP, bytes echoed back, a clean close."""
    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    async def main():
        async with server(echo) as port:
            t = await connect(port)
            assert t.alpn is None and t.is_plain_tcp() and not t.is_tls and not t.is_peer_closed()
            t.write(b"hello")
            await t.drain()
            assert await read_exactly(t, 5) == b"hello"
            t.write_eof()
            assert await t.read(10) == b""
            await t.aclose()
            assert t.is_closing()

    run(main())


def test_refused_port_is_one_line_unreachable_error():
    """Nothing listening: UpstreamUnreachableError, one line naming what and where."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        with pytest.raises(UpstreamUnreachableError) as info:
            await connect(port)
        return str(info.value)

    message = run(main())
    assert "\n" not in message and f"origin 127.0.0.1:{port}" in message and "cannot connect" in message


def test_peer_close_while_idle_shows_as_peer_closed():
    """The peer closes an idle connection: is_peer_closed turns true without a read."""
    async def close_at_once(r, w):
        w.close()

    async def main():
        async with server(close_at_once) as port:
            t = await connect(port)
            await until(t.is_peer_closed)
            t.abort()

    run(main())


def test_unsolicited_bytes_while_idle_show_as_peer_closed():
    """Bytes nobody asked for (an unsolicited 408) make an idle connection unusable."""
    async def say_408(r, w):
        w.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await w.drain()
        await r.read()

    async def main():
        async with server(say_408) as port:
            t = await connect(port)
            await until(t.is_peer_closed)
            assert not t.is_closing()  # still open: only the bytes condemn it
            t.abort()

    run(main())


def test_abort_gives_the_peer_a_reset():
    """abort() closes with SO_LINGER 0: the peer's read fails with ECONNRESET."""
    seen: asyncio.Queue = asyncio.Queue()

    async def wait_read(r, w):
        try:
            seen.put_nowait(await r.read(10))
        except ConnectionResetError as exc:
            seen.put_nowait(exc)

    async def main():
        async with server(wait_read) as port:
            t = await connect(port)
            await asyncio.sleep(0)
            t.abort()
            return await seen.get()

    assert isinstance(run(main()), ConnectionResetError)


def test_splice_to_moves_exactly_count_bytes_and_leaves_the_connection_usable():
    """Buffered bytes go first, exactly ``count`` bytes reach ``dst``, the next bytes stay
    readable and the connection still carries a request afterwards."""
    size = 4 * READ_LIMIT  # more than a full receive buffer: reading was paused too
    body = bytes(range(256)) * (size // 256)
    got_ping: asyncio.Future = None

    async def send_body(r, w):
        w.write(b"head" + body + b"tail")
        await w.drain()
        got_ping.set_result(await r.read(4))

    async def main():
        nonlocal got_ping
        got_ping = asyncio.get_running_loop().create_future()
        async with server(send_body) as port:
            t = await connect(port)
            assert await read_exactly(t, 4) == b"head"
            await until(t.is_peer_closed)  # some of the body is buffered here already
            async with app_pair() as (app, peer):
                got = asyncio.ensure_future(receive(peer, size))
                result = await t.splice_to(app, size, first=b"")
                assert result.end is RelayEnd.CLOSED
                assert await got == body
            assert await read_exactly(t, 4) == b"tail"
            t.write(b"ping")
            await t.drain()
            assert await got_ping == b"ping"
            await t.aclose()

    run(main())


def test_socket_stream_detach_returns_the_socket_and_the_buffered_bytes():
    """detach(): a plain socket of the same connection plus every byte already received."""
    async def talk(r, w):
        w.write(b"hello")
        await w.drain()
        w.write(await r.read(5) + b"!")
        await w.drain()
        await r.read()

    async def main():
        async with server(talk) as port:
            t = await connect(port)
            stream = SocketStream(t, first=b">")
            await until(t.is_peer_closed)  # "hello" is buffered
            sock, buffered = stream.detach()
            loop = asyncio.get_running_loop()
            try:
                assert buffered == b">hello"
                await loop.sock_sendall(sock, b"world")
                assert await receive(sock, 6) == b"world!"
            finally:
                sock.close()
            assert stream.detach() is None  # once only

    run(main())


def test_tls_transport_negotiates_alpn_and_never_detaches_or_splices(pki):
    """Over TLS: ALPN is reported, bytes flow, but nothing leaves as a plain socket."""
    ca, crt, key = pki
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)
    server_ctx.set_alpn_protocols(["h2"])
    client_ctx = ssl.create_default_context(cafile=ca)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])

    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()

    async def main():
        async with server(echo, server_ctx) as port:
            t = await connect(port, tls=client_ctx, server_hostname="localhost")
            assert t.alpn == "h2" and t.is_tls and not t.is_plain_tcp()
            stream = SocketStream(t)
            assert stream.socket is None and stream.detach() is None
            await stream.write(b"over tls")
            assert await read_exactly(t, 8) == b"over tls"
            async with app_pair() as (app, _):
                assert (await t.splice_to(app, 1)).end is RelayEnd.UPSTREAM_RESET
            await stream.aclose()

    run(main())


class _FakeTransport:
    """What _Buffered calls on its transport: pause and resume reading (counted)."""

    def __init__(self) -> None:
        self.paused = self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


def test_buffer_take_returns_bytes_in_order_across_chunk_boundaries():
    """Chunks are taken whole, split, joined and partly put back, always in order and never
    more than asked; reading pauses above twice the limit and resumes at the limit."""
    from atlantic.pool.transport import _Buffered

    async def main():
        p = _Buffered(limit=10, over_tls=False)
        tr = _FakeTransport()
        p.connection_made(tr)
        chunk = b"abcdefgh"
        p.data_received(chunk)
        assert p.take() is chunk  # a lone chunk is handed over as it is
        stream = bytes(range(256)) * 4
        for i in range(0, len(stream), 7):
            p.data_received(stream[i:i + 7])
        assert tr.paused == 1 and p.read_paused
        got = b""
        for want in (0, 1, 3, 7, 8, 20, 1000, 5000):
            part = p.take(want)
            assert len(part) == min(want, len(stream) - len(got))
            got += part
            assert p.size == len(stream) - len(got)
        assert got == stream and p.take() == b"" and p.size == 0
        assert tr.resumed == 1 and not p.read_paused

    asyncio.run(main())


def test_reads_through_the_shared_scratch_buffer_keep_every_byte(pki):
    """asyncio reads into one scratch buffer per thread; each read is copied out as it lands,
    so chunks left unread while later reads reuse the buffer keep their bytes, plain and
    over TLS, and no chunk is larger than READ_CHUNK (below the allocator's mmap threshold)."""
    from atlantic.pool.transport import READ_CHUNK

    payload = os.urandom(3 * READ_CHUNK + 12345)

    async def send_all(r, w):
        await r.read(1)
        w.write(payload)
        await w.drain()
        w.close()

    async def main(server_ctx, client_ctx):
        async with server(send_all, server_ctx) as port:
            t = await connect(port, tls=client_ctx, server_hostname="localhost" if client_ctx else None)
            t.write(b"go")
            await until(lambda: t.is_peer_closed() and t._p.size == len(payload))  # all buffered, unread
            assert all(len(c) <= READ_CHUNK for c in t._p.chunks) and len(t._p.chunks) >= 4
            assert await read_exactly(t, len(payload)) == payload
            await t.aclose()

    ca, crt, key = pki
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)
    run(main(None, None))
    run(main(server_ctx, ssl.create_default_context(cafile=ca)))
