"""HTTP/2 to an https proxy: a scripted h2 server (the h2 library's server side) on loopback TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from atlantic.pool.errors import UpstreamAuthError
from atlantic.lab.pki import make_ca, make_server_cert
from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.pool import UpstreamPool

TIMEOUT = 15


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA and a localhost certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    crt, key = make_server_cert(d, "srv", "localhost", "127.0.0.1")
    return str(ca), str(crt), str(key)


class H2Peer:
    """A scripted HTTP/2 proxy: GET answers ``body``, CONNECT echoes, 407 without auth."""

    def __init__(self, *, max_streams: int = 100, body: bytes = b"hello", goaway_after: int | None = None,
                 hold_requests: bool = False, mute: bool = False) -> None:
        self.max_streams, self.body, self.goaway_after = max_streams, body, goaway_after
        self.hold_requests, self.mute = hold_requests, mute
        self.connections = 0
        self.requests: list[dict] = []
        self.pings = 0
        self.open_streams_max = 0
        self._held: list = []

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()
        w.write(conn.data_to_send())
        served = 0
        tunnels: set[int] = set()
        while True:
            data = await r.read(65536)
            if not data:
                return
            if self.mute:
                continue  # a dead peer: reads, never answers (not even PING)
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    hdrs = dict(ev.headers)
                    self.requests.append(hdrs)
                    self.open_streams_max = max(self.open_streams_max, conn.open_inbound_streams)
                    if "proxy-authorization" not in hdrs:
                        conn.send_headers(ev.stream_id, [(":status", "407")], end_stream=True)
                    elif hdrs[":method"] == "CONNECT":
                        tunnels.add(ev.stream_id)
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                    elif self.hold_requests:
                        self._held.append(ev.stream_id)
                    else:
                        conn.send_headers(ev.stream_id, [(":status", "200"),
                                                         ("content-length", str(len(self.body)))])
                        for i in range(0, len(self.body), 16384):
                            conn.send_data(ev.stream_id, self.body[i:i + 16384])
                        conn.end_stream(ev.stream_id)
                        served += 1
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    conn.send_data(ev.stream_id, ev.data.upper())  # the echo of a tunnel
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in tunnels:
                    with contextlib.suppress(Exception):
                        conn.end_stream(ev.stream_id)
                elif isinstance(ev, h2.events.PingReceived):
                    self.pings += 1
            if self.goaway_after is not None and served >= self.goaway_after:
                conn.close_connection(last_stream_id=conn.highest_inbound_stream_id)
            w.write(conn.data_to_send())
            await w.drain()


@contextlib.asynccontextmanager
async def tls_server(peer: H2Peer, pki):
    """The peer behind TLS with ALPN h2 on 127.0.0.1; yields the proxy URL."""
    _, crt, key = pki
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["h2"])
    writers = []

    async def handler(r, w):
        writers.append(w)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await peer.handle(r, w)
        w.transport.abort()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
    try:
        yield f"https://u:p@localhost:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for w in writers:
            w.transport.abort()


def get(path="/x") -> RequestHead:
    return RequestHead("GET", Endpoint("http", "origin.test", 80), path, (("Host", "origin.test"),))


async def fetch(pool, head):
    resp = await pool.request(head, None)
    data = b""
    while piece := await resp.read():
        data += piece
    await resp.aclose()
    return resp.head, data


def test_requests_are_streams_on_one_connection(pki):
    """Concurrent GETs ride one h2 connection as streams with :scheme http and :authority."""
    peer = H2Peer(body=b"b" * 300_000)

    async def main():
        async with tls_server(peer, pki) as url:
            async with UpstreamPool(url, ca_file=pki[0]) as pool:
                results = await asyncio.gather(*(fetch(pool, get(f"/{i}")) for i in range(6)))
                assert all(h.status == 200 and h.http_version == "2" and len(d) == 300_000
                           for h, d in results)
                c = pool.counters()
                assert peer.connections == 1 and c["connections_opened"] == 1 and c["h2_streams"] == 6
                assert repr(pool) == "<Pool [requests: 0 active, 0 queued | connections: 0 active, 1 idle]>"
        r = peer.requests[0]
        assert (r[":scheme"], r[":authority"], r["proxy-authorization"]) == ("http", "origin.test", "Basic dTpw")
        assert "host" not in r
    run(main())


def test_max_concurrent_streams_full_opens_another_connection(pki):
    """With the peer's MAX_CONCURRENT_STREAMS=2, a third concurrent request opens a 2nd connection."""
    peer = H2Peer(max_streams=2)

    async def main2():
        async with tls_server(peer, pki) as url:
            async with UpstreamPool(url, ca_file=pki[0]) as pool:
                await fetch(pool, get())  # the first connection learns the limit
                peer.hold_requests = True
                tasks = [asyncio.create_task(pool.request(get(), None)) for _ in range(3)]
                for _ in range(100):
                    if len(peer.requests) >= 3:
                        break
                    await asyncio.sleep(0.02)
                assert peer.connections == 2 and peer.open_streams_max <= 2
                assert repr(pool).startswith("<Pool [requests: 3 active, 0 queued")
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    run(main2())


def test_connect_streams_are_tunnels_on_the_same_connection(pki):
    """open_tunnel() is a CONNECT stream (no :scheme/:path) on the shared connection; bytes flow."""
    peer = H2Peer()

    async def main():
        async with tls_server(peer, pki) as url:
            async with UpstreamPool(url, ca_file=pki[0]) as pool:
                await fetch(pool, get())
                t1 = await pool.open_tunnel("origin.test", 443)
                t2 = await pool.open_tunnel("origin.test", 80)
                await t1.write(b"abc")
                assert await t1.read() == b"ABC"
                await t2.write_eof()
                assert await t2.read() == b""
                await t1.aclose()
                await t2.aclose()
                c = pool.counters()
                assert peer.connections == 1 and c["tunnels_warm"] == 2 and c["h2_streams"] == 3
                assert repr(pool).endswith("connections: 0 active, 1 idle]>")
        connects = [r for r in peer.requests if r[":method"] == "CONNECT"]
        assert connects[0][":authority"] == "origin.test:443" and ":path" not in connects[0]
    run(main())


def test_407_on_streams_raises_auth_error(pki):
    """A 407 on a GET stream or a CONNECT stream raises UpstreamAuthError; the connection stays."""
    peer = H2Peer()

    async def main():
        async with tls_server(peer, pki) as url:
            url = url.replace("u:p@", "")
            async with UpstreamPool(url, ca_file=pki[0]) as pool:
                with pytest.raises(UpstreamAuthError):
                    await pool.request(get(), None)
                with pytest.raises(UpstreamAuthError, match="CONNECT origin.test:443"):
                    await pool.open_tunnel("origin.test", 443)
                assert peer.connections == 1
    run(main())


def test_goaway_drains_then_new_connection(pki):
    """After GOAWAY the next request opens a new connection; the finished one is closed."""
    peer = H2Peer(goaway_after=1)

    async def main():
        async with tls_server(peer, pki) as url:
            async with UpstreamPool(url, ca_file=pki[0]) as pool:
                assert (await fetch(pool, get()))[1] == b"hello"
                await asyncio.sleep(0.1)
                assert (await fetch(pool, get()))[1] == b"hello"
                assert peer.connections == 2
    run(main())


def test_ping_keeps_alive_and_detects_a_dead_peer(pki):
    """Idle connections are PINGed; a peer that stops answering is dropped, the next request reconnects."""
    peer = H2Peer()

    async def main():
        async with tls_server(peer, pki) as url:
            async with UpstreamPool(url, ca_file=pki[0], ping_interval=0.2, ping_timeout=0.3) as pool:
                await fetch(pool, get())
                await asyncio.sleep(0.5)
                assert peer.pings >= 1 and pool.counters()["connections_open"] == 1
                peer.mute = True
                await asyncio.sleep(1.2)
                assert pool.counters()["connections_open"] == 0
                peer.mute = False
                assert (await fetch(pool, get()))[1] == b"hello" and peer.connections == 2
    run(main())
