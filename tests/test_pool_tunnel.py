"""Tunnels: CONNECT on warm/cold HTTP/1.1 proxy connections, direct tunnels, early data (loopback)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from atlantic.pool.errors import UpstreamAuthError
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.tunnel import connect_request

TIMEOUT = 10


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


class ConnectProxy:
    """A scripted CONNECT proxy: 200 (+ ``greeting`` bytes) then an upper-casing echo; 407 without auth."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.accepted = 0
        self.heads: list[bytes] = []

    async def handle(self, r, w):
        self.accepted += 1
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return  # a warm connection closed unused
        self.heads.append(head)
        if b"Proxy-Authorization: Basic " not in head:
            w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            return
        w.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.greeting)
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()


@contextlib.asynccontextmanager
async def proxy_server(proxy: ConnectProxy):
    """The scripted proxy on 127.0.0.1; yields its port."""
    writers = []

    async def handler(r, w):
        writers.append(w)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await proxy.handle(r, w)
        w.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in writers:
            w.transport.abort()


async def wait_for(pred, seconds: float = 3.0):
    """Poll ``pred`` every 20 ms, at most ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


def test_connect_request_bytes_use_the_ready_made_header():
    """CONNECT line, Host, and the snapshot's Proxy-Authorization value as given; IPv6 bracketed."""
    assert connect_request("::1", 443, "Basic eA==") == (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nProxy-Authorization: Basic eA==\r\n\r\n")
    assert b"Proxy-Authorization" not in connect_request("h", 80, None)


def test_first_tunnel_cold_then_warm_connections_are_used():
    """The first CONNECT opens a cold connection; warm ones are then kept ready and consumed."""
    proxy = ConnectProxy(greeting=b"hi")

    async def main():
        async with proxy_server(proxy) as port:
            async with UpstreamPool(f"http://u:p@127.0.0.1:{port}", warm_tunnels=2) as pool:
                t = await pool.open_tunnel("origin.test", 443)
                assert await t.read() == b"hi"  # bytes right behind the 200 are the app's
                await t.write(b"abc")
                assert await t.read() == b"ABC"
                await t.aclose()
                assert await wait_for(lambda: len(pool.warm) == 2)
                assert proxy.accepted == 3
                t2 = await pool.open_tunnel("origin.test", 80)
                await t2.write(b"x")
                assert await t2.read() == b"hi" and await t2.read() == b"X"
                await t2.aclose(reset=True)
                c = pool.counters()
                assert (c["tunnels_cold"], c["tunnels_warm"]) == (1, 1)
                assert await wait_for(lambda: len(pool.warm) == 2)  # replenished
        assert proxy.heads[0].startswith(b"CONNECT origin.test:443 HTTP/1.1\r\n")
    run(main())


def test_407_on_connect_raises_auth_error():
    """A 407 answer to CONNECT raises UpstreamAuthError with one clear line."""
    proxy = ConnectProxy()

    async def main():
        async with proxy_server(proxy) as port:
            async with UpstreamPool(f"http://127.0.0.1:{port}", warm_tunnels=0) as pool:
                with pytest.raises(UpstreamAuthError, match="rejected the credentials") as e:
                    await pool.open_tunnel("origin.test", 443)
                assert "\n" not in str(e.value)
    run(main())


def test_early_data_goes_behind_connect_and_407_surfaces_on_read():
    """early_connect_data: the app's bytes follow CONNECT at once; a 407 is raised by read()."""
    proxy = ConnectProxy()

    async def main():
        async with proxy_server(proxy) as port:
            async with UpstreamPool(f"http://u:p@127.0.0.1:{port}", warm_tunnels=0,
                                    early_connect_data=True) as pool:
                t = await pool.open_tunnel("origin.test", 80)
                await t.write(b"ping")
                assert await t.read() == b"PING"
                await t.aclose()
            async with UpstreamPool(f"http://127.0.0.1:{port}", warm_tunnels=0,
                                    early_connect_data=True) as pool:
                t = await pool.open_tunnel("origin.test", 80)
                await t.write(b"ping")
                with pytest.raises(UpstreamAuthError):
                    await t.read()
    run(main())


def test_direct_tunnel_is_a_plain_socket_stream():
    """direct: a TCP connection to the target itself, exposing its socket for splicing."""
    proxy = ConnectProxy()

    async def main():
        async def echo(r, w):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            async with UpstreamPool("direct") as pool:
                t = await pool.open_tunnel("127.0.0.1", server.sockets[0].getsockname()[1])
                assert t.socket is not None
                await t.write(b"x" * 100_000)
                got = b""
                while len(got) < 100_000:
                    got += await t.read()
                await t.write_eof()
                assert await t.read() == b""
                await t.aclose()
                assert pool.counters()["tunnels_cold"] == 1
        finally:
            server.close()
    del proxy
    run(main())
