"""Plain HTTP in kept CONNECT tunnels per origin (``plain_http="tunnel"``), on loopback.

A scripted HTTP/1.1 proxy relays CONNECT to a real h11 origin (``http1_peers.Origin``)
and answers proxy requests (absolute-form) itself, so each test sees which way a request
went; the application side is the real forwarder (``app_flow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest
from http1_peers import Origin, app_flow, read_response
from test_pool_tunnel import proxy_server

from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.errors import UpstreamAuthError
from atlantic.pool.pool import UpstreamPool

AUTH = b"Proxy-Authorization: Basic dTpw"  # u:p


def run(coro, limit: float = 30.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


class Proxy:
    """CONNECT to 127.0.0.1 ports in ``allow`` (403 otherwise, 407 without credentials),
    relayed to the real origin; proxy requests answered with the body ``forwarded``."""

    def __init__(self, allow: set[int] | None = None, *, answer_after_request: bool = False,
                 drop_first: bool = False) -> None:
        self.allow = allow
        self.answer_after_request = answer_after_request  # 200 only once request bytes came
        self.drop_first = drop_first  # close the first CONNECT's connection unanswered
        self.connects: list[str] = []
        self.forwarded: list[str] = []
        self.port = 0

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(1000):  # bounded: requests per proxy connection
            try:
                head = await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            line = head.split(b"\r\n", 1)[0].decode()
            method, target, _ = line.split(" ")
            if AUTH not in head:
                w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                await w.drain()
                continue
            if method != "CONNECT":
                self.forwarded.append(line)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nforwarded")
                await w.drain()
                continue
            self.connects.append(target)
            if self.drop_first:
                self.drop_first = False
                return
            port = int(target.rpartition(":")[2])
            if self.allow is not None and port not in self.allow:
                w.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await w.drain()
                continue
            early = await r.readuntil(b"\r\n\r\n") if self.answer_after_request else b""
            await self._relay(r, w, port, early)
            return

    @staticmethod
    async def _relay(r, w, port: int, early: bytes) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", port)
        uw.write(early)
        w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst):
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        try:
            await asyncio.gather(pipe(r, uw), pipe(ur, w))
        finally:
            uw.close()


@contextlib.asynccontextmanager
async def serving(proxy: Proxy):
    """``proxy`` on 127.0.0.1 (its ``port`` set), as test_pool_tunnel serves its scripted proxy."""
    async with proxy_server(proxy) as port:
        proxy.port = port
        yield proxy


def pool_for(proxy: Proxy, user: str = "u:p", **kw) -> UpstreamPool:
    return UpstreamPool(f"http://{user}@127.0.0.1:{proxy.port}", warm_tunnels=0, connect_timeout=5.0, **kw)


async def get(pool, origin_port: int, path: str) -> tuple[int, bytes]:
    async with app_flow(pool, dst=("127.0.0.1", origin_port)) as (reader, writer, _, _):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode())
        status, _, body, _ = await read_response(reader)
    writer.close()
    return status, body


def test_requests_ride_one_tunnel_per_origin_in_origin_form():
    """Five new application connections: one CONNECT, five origin-form requests on one
    origin connection, and the proxy's credentials never reach the origin."""

    async def go():
        async with Origin() as origin, serving(Proxy()) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                results = [await get(pool, origin.port, f"/echo?i={i}") for i in range(5)]
                return origin, proxy, results, pool.counters()

    origin, proxy, results, c = run(go())
    assert [s for s, _ in results] == [200] * 5
    assert [json.loads(b)["target"] for _, b in results] == [f"/echo?i={i}" for i in range(5)]
    assert proxy.connects == [f"127.0.0.1:{origin.port}"] and proxy.forwarded == []
    assert origin.connections == 1
    assert not any(n.lower() == "proxy-authorization" for r in origin.requests for n, _ in r["headers"])
    assert c["http_tunnels_opened"] == 1 and c["requests"] == 5 and c["reused"] == 4, c


def test_each_origin_gets_its_own_tunnel_and_bodies_splice_through():
    """Two origins, two tunnels; a 4 MiB body arrives whole through the tunnel."""

    async def go():
        async with Origin() as a, Origin() as b, serving(Proxy()) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                big = await get(pool, a.port, "/sized?n=4194304")
                other = await get(pool, b.port, "/echo")
                again = await get(pool, a.port, "/echo")
                return a, b, proxy, big, other, again, pool.counters()

    a, b, proxy, big, other, again, c = run(go())
    assert big[0] == 200 and big[1] == (bytes(range(256)) * 16384)
    assert other[0] == 200 and again[0] == 200
    assert sorted(proxy.connects) == sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    assert a.connections == 1 and b.connections == 1 and c["http_tunnels_opened"] == 2, c


def test_a_refused_connect_sends_that_port_as_proxy_requests_from_then_on(caplog):
    """403 on CONNECT to a port: the same request goes forward at once, one warning line,
    and later requests to that port never try CONNECT again."""

    async def go():
        async with Origin() as origin, serving(Proxy(allow={443})) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                results = [await get(pool, origin.port, f"/echo?i={i}") for i in range(3)]
                return origin, proxy, results, pool.counters()

    with caplog.at_level(logging.WARNING, logger="atlantic.pool"):
        origin, proxy, results, c = run(go())
    assert results == [(200, b"forwarded")] * 3
    assert proxy.connects == [f"127.0.0.1:{origin.port}"]  # tried once
    assert [ln.split(" ")[1] for ln in proxy.forwarded] == [f"http://127.0.0.1:{origin.port}/echo?i={i}"
                                                           for i in range(3)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "403" in warnings[0] and "u:p" not in warnings[0], warnings
    assert "\n" not in warnings[0] and f"port {origin.port}" in warnings[0]
    assert c["http_tunnels_refused"] == 1 and c["http_tunnels_opened"] == 1, c  # one CONNECT tried


def test_wrong_credentials_on_connect_are_an_auth_error_not_a_fallback():
    """407 on the tunnel's CONNECT is the credentials' fault: raised, nothing forwarded."""

    async def go():
        async with Origin() as origin, serving(Proxy()) as proxy:
            async with UpstreamPool(f"http://127.0.0.1:{proxy.port}", warm_tunnels=0,
                                    plain_http="tunnel") as pool:
                head = RequestHead("GET", Endpoint("http", "127.0.0.1", origin.port), "/echo",
                                   (("Host", f"127.0.0.1:{origin.port}"),))
                with pytest.raises(UpstreamAuthError) as err:
                    await pool.request(head, None)
                return proxy, str(err.value), pool.counters()

    proxy, message, c = run(go())
    assert proxy.forwarded == [] and len(proxy.connects) == 0  # 407 before the CONNECT line is kept
    assert "credentials" in message and c["http_tunnels_refused"] == 0


def test_forward_mode_never_connects():
    """``plain_http="forward"``: absolute-form proxy requests only."""

    async def go():
        async with Origin() as origin, serving(Proxy()) as proxy:
            async with pool_for(proxy, plain_http="forward") as pool:
                result = await get(pool, origin.port, "/echo")
                return proxy, result, pool.counters()

    proxy, result, c = run(go())
    assert result == (200, b"forwarded") and proxy.connects == [] and c["http_tunnels_opened"] == 0


def test_an_idle_tunnel_the_origin_closed_is_replaced_transparently():
    """The origin closes the kept connection (its tunnel ends): the next request opens a
    new tunnel instead of failing."""

    async def go():
        async with Origin() as origin, serving(Proxy()) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                first = await get(pool, origin.port, "/echo")
                async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, _, _):
                    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    closing = await read_response(reader)
                writer.close()
                await asyncio.sleep(0.2)
                after = await get(pool, origin.port, "/echo")
                return origin, proxy, first, closing, after, pool.counters()

    origin, proxy, first, closing, after, c = run(go())
    assert first[0] == closing[0] == after[0] == 200
    assert len(proxy.connects) == 2 and origin.connections == 2, (proxy.connects, c)


def test_unknown_plain_http_mode_is_refused():
    with pytest.raises(ValueError, match="plain_http"):
        UpstreamPool("http://127.0.0.1:1", plain_http="sometimes")


def test_what_the_pool_keeps_per_origin_key_stays_bounded(monkeypatch):
    """Keys come per origin: past the bound, the keys with no connection and no waiter are
    forgotten (a day of browsing many origins must not grow the pool)."""
    from atlantic.pool import pool as pool_module

    monkeypatch.setattr(pool_module, "_KEYS_KEPT", 2)

    async def go():
        async with Origin() as a, Origin() as b, Origin() as c, serving(Proxy()) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                sizes = []
                for origin in (a, b, c, a):
                    assert (await get(pool, origin.port, "/echo"))[0] == 200
                    pool.conns.drop_idle()  # as the idle timeout would
                    await asyncio.sleep(0.05)
                    sizes.append(len(pool._snaps))
                return sizes, pool.counters()

    sizes, c = run(go())
    assert max(sizes) <= 2 and c["requests"] == 4 and c["http_tunnels_opened"] == 4, (sizes, c)


def test_the_first_request_goes_right_behind_the_connect():
    """No round trip waits for the 200: a proxy that answers CONNECT only once the request's
    bytes arrived still serves it (a pool waiting for the 200 first would hang here)."""

    async def go():
        async with Origin() as origin, serving(Proxy(answer_after_request=True)) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                first = await get(pool, origin.port, "/echo?first")
                again = await get(pool, origin.port, "/echo?again")
                return proxy, first, again, pool.counters()

    proxy, first, again, c = run(go())
    assert json.loads(first[1])["target"] == "/echo?first" and json.loads(again[1])["target"] == "/echo?again"
    assert len(proxy.connects) == 1 and c["reused"] == 1, c


def test_a_proxy_connection_closed_at_the_connect_is_retried_once():
    """A (warm) proxy connection that closes on the CONNECT before answering: the idempotent
    request goes again on a new tunnel instead of failing."""

    async def go():
        async with Origin() as origin, serving(Proxy(drop_first=True)) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                result = await get(pool, origin.port, "/echo")
                return proxy, result, pool.counters()

    proxy, result, c = run(go())
    assert result[0] == 200 and len(proxy.connects) == 2 and c["retries"] == 1, c


def test_a_refused_connect_with_a_request_body_is_an_error_and_later_requests_forward():
    """A body already sent behind a refused CONNECT is not sent twice: that request fails
    with the proxy's reason (one line); the next one goes as a proxy request."""

    async def go():
        async with Origin() as origin, serving(Proxy(allow={443})) as proxy:
            async with pool_for(proxy, plain_http="tunnel") as pool:
                async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, _, _):
                    writer.write(f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
                                 "Content-Length: 2\r\n\r\nhi".encode())
                    posted = await read_response(reader)
                writer.close()
                later = await get(pool, origin.port, "/echo")
                return proxy, posted, later, pool.counters()

    proxy, posted, later, c = run(go())
    assert posted[0] == 502 and b"refused CONNECT" in posted[2] and posted[2].count(b"\n") == 1, posted
    assert later == (200, b"forwarded") and len(proxy.connects) == 1, proxy.connects
    assert c["http_tunnels_refused"] == 1, c
