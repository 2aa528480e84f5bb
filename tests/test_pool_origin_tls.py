"""HTTPS requests on pooled origin TLS connections, against real peers on loopback: TLS
origins (h11, and h2 with the h2 library), CONNECT proxies (plain, behind TLS, HTTP/2)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess

import h2.config
import h2.connection
import h2.events
import h11
import pytest

from atlantic.lab.pki import make_ca, make_server_cert
from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.errors import OriginTLSError, UpstreamAuthError
from atlantic.pool.origin_tls import SessionCache, is_origin_key, origin_address, origin_key
from atlantic.pool.plan import PoolKey
from atlantic.pool.pool import UpstreamPool

TIMEOUT = 20


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA; certificates for video.test, localhost, a wrong name, and a self-signed one."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    certs = {name: make_server_cert(d, name, host, "127.0.0.1")
             for name, host in (("video", "video.test"), ("local", "localhost"), ("other", "other.test"))}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=video.test", "-addext", "subjectAltName=DNS:video.test",
                    "-keyout", "self.key", "-out", "self.crt"], cwd=d, check=True, capture_output=True, timeout=20)
    certs["self"] = (d / "self.crt", d / "self.key")
    return str(ca), {k: (str(c), str(k_)) for k, (c, k_) in certs.items()}


def server_ctx(cert: tuple[str, str], alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    ctx.set_alpn_protocols(alpn)
    return ctx


@contextlib.asynccontextmanager
async def serve(handler, ctx: ssl.SSLContext | None = None):
    """``handler(r, w)`` per connection on 127.0.0.1 (TLS if ``ctx``); yields the port."""
    writers = []

    async def wrapped(r, w):
        writers.append(w)
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError,
                                 asyncio.CancelledError):
            await handler(r, w)
        w.transport.abort()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in writers:
            w.transport.abort()


class Origin:
    """A TLS origin: h11 or h2 as ALPN chose; answers ``<target> #<n>``; records what it saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.requests: list[dict] = []
        self.resumed: list[bool] = []
        self.drop_next = 0  # requests to answer by closing the connection
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, r, w) -> None:
        self.connections += 1
        self.open += 1
        self.writers.append(w)
        sslobj = w.get_extra_info("ssl_object")
        self.resumed.append(sslobj.session_reused)
        try:
            await (self._h2 if sslobj.selected_alpn_protocol() == "h2" else self._h1)(r, w)
        finally:
            self.open -= 1

    def close_all(self) -> None:
        """Close every connection cleanly (close_notify, FIN), as an idle timeout would."""
        for w in self.writers:
            w.close()

    def _body(self, received: int = 0) -> bytes:
        target = self.requests[-1]["target"]
        if target.startswith("/big"):
            return bytes(range(256)) * (int(target.split("=")[1]) // 256)
        return f"{target} #{len(self.requests)} got {received}".encode() if received else \
            f"{target} #{len(self.requests)}".encode()

    async def _h1(self, r, w) -> None:
        conn = h11.Connection(h11.SERVER)
        received = 0
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await r.read(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(ev, h11.Request):
                self.requests.append({"target": ev.target.decode(), "proto": "h1",
                                      "headers": {n.decode(): v.decode() for n, v in ev.headers.raw_items()}})
            elif isinstance(ev, h11.Data):
                received += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                if self.drop_next:
                    self.drop_next -= 1
                    w.close()
                    return
                body, received = self._body(received), 0
                w.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]))
                        + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await w.drain()
                conn.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                return

    async def _h2(self, r, w) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        w.write(conn.data_to_send())
        received: dict[int, int] = {}
        while data := await r.read(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    hdrs = dict(ev.headers)
                    self.requests.append({"target": hdrs[":path"], "proto": "h2", "headers": hdrs})
                    received[ev.stream_id] = 0
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    received[ev.stream_id] += len(ev.data)
                elif isinstance(ev, h2.events.StreamEnded):
                    body = self._body(received.pop(ev.stream_id))
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    for i in range(0, len(body), 16384):  # the client's windows are 2^24
                        conn.send_data(ev.stream_id, body[i:i + 16384], end_stream=i + 16384 >= len(body))
            w.write(conn.data_to_send())
            await w.drain()


class ConnectProxy:
    """A CONNECT proxy (HTTP/1.1) that sends every tunnel to 127.0.0.1:``port``; 407 without auth."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connects: list[str] = []

    async def handle(self, r, w) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        self.connects.append(head.split(b"\r\n")[0].decode())
        if b"Proxy-Authorization: Basic " not in head:
            w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst):
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()
        try:
            await asyncio.gather(pipe(r, uw), pipe(ur, w))
        finally:
            uw.transport.abort()


class H2ConnectProxy:
    """An HTTP/2 proxy (nghttpx-like): CONNECT streams relayed to 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connects: list[str] = []

    async def handle(self, r, w) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        w.write(conn.data_to_send())
        ups: dict[int, asyncio.StreamWriter] = {}
        tasks = set()

        async def pump(sid, ur):
            while data := await ur.read(16384):
                conn.send_data(sid, data)
                w.write(conn.data_to_send())
            with contextlib.suppress(Exception):
                conn.end_stream(sid)
                w.write(conn.data_to_send())
        try:
            while data := await r.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hdrs = dict(ev.headers)
                        self.connects.append(f"{hdrs[':method']} {hdrs[':authority']}")
                        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
                        ups[ev.stream_id] = uw
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                        t = asyncio.create_task(pump(ev.stream_id, ur))
                        tasks.add(t)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        ups[ev.stream_id].write(ev.data)
                    elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                        if uw := ups.pop(ev.stream_id, None):
                            uw.close()
                w.write(conn.data_to_send())
                await w.drain()
        finally:
            for t in tasks:
                t.cancel()
            for uw in ups.values():
                uw.transport.abort()


def get(host: str, port: int = 443, target: str = "/seg") -> RequestHead:
    return RequestHead("GET", Endpoint("https", host, port), target, (("Accept", "*/*"),))


async def fetch(pool: UpstreamPool, head: RequestHead) -> bytes:
    resp = await pool.request(head, None)
    body = b""
    while data := await resp.read():
        body += data
    await resp.aclose()
    return body


async def wait_for(pred, seconds: float = 3.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


# ---- pure pieces ----

def test_origin_keys_are_per_proxy_key_and_origin():
    """An origin key keeps the proxy's endpoint and credentials and names the origin; IPv6 bracketed."""
    proxy = PoolKey("http://p:3128", "Basic eA==")
    k = origin_key(proxy, "video.test", 443)
    assert k == PoolKey("http://p:3128", "Basic eA==", "https://video.test:443") and is_origin_key(k)
    assert origin_address(origin_key(proxy, "::1", 8443)) == ("::1", 8443)
    assert not is_origin_key(proxy) and not is_origin_key(PoolKey("direct", "", "h:80"))
    assert origin_key(PoolKey("http://p:3128", "Basic eQ=="), "video.test", 443) != k


def test_session_cache_is_bounded_and_keeps_the_newest():
    """The session cache keeps one session per key, the newest, and drops the oldest key beyond its size."""
    cache = SessionCache(size=2)
    keys = [PoolKey("direct", "", f"https://h{i}:443") for i in range(3)]
    for i, k in enumerate(keys):
        cache.put(k, f"s{i}")  # type: ignore[arg-type]
    cache.put(keys[1], "s1b")  # type: ignore[arg-type]
    assert len(cache) == 2 and cache.get(keys[0]) is None and cache.get(keys[1]) == "s1b"


def test_a_scheme_other_than_http_or_https_is_the_callers_error():
    """A request for a scheme the pool cannot carry fails before any connection, one line."""
    from atlantic.pool.errors import LocalProtocolError
    from atlantic.pool.http11 import check_request
    with pytest.raises(LocalProtocolError, match="scheme 'ftp' is neither http nor https"):
        check_request(RequestHead("GET", Endpoint("ftp", "h", 21), "/", ()))
    check_request(get("video.test"))


# ---- loopback ----

@pytest.mark.parametrize("early", [False, True])
def test_ten_requests_through_a_connect_proxy_reuse_one_origin_connection(pki, early):
    """Ten sequential HTTPS requests through an HTTP proxy (warm connections on, ClientHello
    behind the CONNECT or after its 200): one CONNECT, one origin TLS connection,
    origin-form with Host and no Proxy-Authorization; counters say so."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs["video"], ["http/1.1"])) as oport:
            proxy = ConnectProxy(oport)
            async with serve(proxy.handle) as pport:
                async with UpstreamPool(f"http://u:p@127.0.0.1:{pport}", origin_ca_file=ca,
                                        early_connect_data=early) as pool:
                    for i in range(10):
                        assert await fetch(pool, get("video.test", target=f"/seg{i}")) == f"/seg{i} #{i + 1}".encode()
                    c = pool.counters()
        assert proxy.connects == ["CONNECT video.test:443 HTTP/1.1"]
        assert origin.connections == 1 and len(origin.requests) == 10
        for req in origin.requests:
            assert req["proto"] == "h1" and req["target"].startswith("/seg")
            assert req["headers"]["Host"] == "video.test"
            assert "Proxy-Authorization" not in req["headers"]
        assert (c["origin_tls_opened"], c["origin_tls_reused"], c["reused"], c["requests"]) == (1, 9, 9, 10)
        assert c["connections_opened"] == 1
    run(main())


def test_direct_mode_reuses_one_origin_connection_and_resumes_after_drain(pki):
    """direct: TLS straight to the origin, reused; drain closes the idle connection, and
    the next one resumes the TLS session."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs["local"], ["http/1.1"])) as oport:
            async with UpstreamPool("direct", origin_ca_file=ca) as pool:
                for _ in range(5):
                    await fetch(pool, get("localhost", oport))
                assert origin.connections == 1
                pool.drain()
                assert await wait_for(lambda: origin.open == 0)
                assert pool.counters()["connections_open"] == 0
                await fetch(pool, get("localhost", oport))
                c = pool.counters()
        assert origin.connections == 2 and origin.resumed == [False, True]
        assert (c["origin_tls_opened"], c["origin_tls_reused"], c["origin_tls_resumed"]) == (2, 4, 1)
    run(main())


@pytest.mark.parametrize("cert, reason", [
    ("self", "certificate verify failed: self-signed certificate"),
    ("other", "certificate verify failed: Hostname mismatch"),
])
def test_an_origin_certificate_that_does_not_verify_is_refused(pki, cert, reason):
    """A self-signed or wrong-name origin certificate raises OriginTLSError naming the
    origin and the reason, in one line; no request reaches the origin."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs[cert], ["http/1.1"])) as oport:
            proxy = ConnectProxy(oport)
            async with serve(proxy.handle) as pport:
                async with UpstreamPool(f"http://u:p@127.0.0.1:{pport}", origin_ca_file=ca,
                                        warm_tunnels=0) as pool:
                    with pytest.raises(OriginTLSError) as e:
                        await pool.request(get("video.test"), None)
        msg = str(e.value)
        assert msg.startswith(f"origin video.test:443: {reason}") and "\n" not in msg
        assert e.value.origin == "video.test:443" and e.value.reason.startswith(reason)
        assert origin.requests == []
    run(main())


def test_h2_origin_multiplexes_requests_on_one_connection(pki):
    """An origin that offers h2: concurrent requests go as streams on one connection,
    with :scheme https, :authority, and no proxy-authorization."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs["video"], ["h2", "http/1.1"])) as oport:
            proxy = ConnectProxy(oport)
            async with serve(proxy.handle) as pport:
                async with UpstreamPool(f"http://u:p@127.0.0.1:{pport}", origin_ca_file=ca,
                                        warm_tunnels=0) as pool:
                    bodies = await asyncio.gather(*(fetch(pool, get("video.test", target=f"/s{i}"))
                                                    for i in range(10)))
                    c = pool.counters()
        assert sorted(b.split(b" ")[0] for b in bodies) == sorted(f"/s{i}".encode() for i in range(10))
        assert origin.connections == 1 and len(proxy.connects) == 1
        for req in origin.requests:
            h = req["headers"]
            assert req["proto"] == "h2" and h[":scheme"] == "https" and h[":authority"] == "video.test"
            assert "proxy-authorization" not in h
        assert c["origin_tls_opened"] == 1 and c["h2_streams"] == 10
    run(main())


@contextlib.asynccontextmanager
async def pool_via(kind: str, oport: int, pki):
    """A pool to the origin on ``oport``: ``direct``, or through a CONNECT proxy that is
    plain (``http``) or TLS with HTTP/2 (``h2``); yields ``(pool, host, port)`` to request."""
    ca, certs = pki
    if kind == "direct":
        async with UpstreamPool("direct", origin_ca_file=ca) as pool:
            yield pool, "localhost", oport
        return
    proxy = (H2ConnectProxy if kind == "h2" else ConnectProxy)(oport)
    tls = server_ctx(certs["local"], ["h2"]) if kind == "h2" else None
    async with serve(proxy.handle, tls) as pport:
        url = f"https://u:p@localhost:{pport}" if kind == "h2" else f"http://u:p@127.0.0.1:{pport}"
        async with UpstreamPool(url, ca_file=ca, origin_ca_file=ca) as pool:
            yield pool, "video.test", 443


@pytest.mark.parametrize("kind", ["direct", "http", "h2"])
def test_a_stale_origin_connection_is_replaced_and_a_dropped_request_retried_once(pki, kind):
    """An idle connection the origin closed is not reused (no retry needed); a request the
    origin drops without an answer on a reused connection is retried once on a new one;
    direct, through an HTTP/1.1 proxy and through an HTTP/2 proxy."""
    origin = Origin()

    async def main():
        cert = pki[1]["local" if kind == "direct" else "video"]
        async with serve(origin.handle, server_ctx(cert, ["http/1.1"])) as oport:
            async with pool_via(kind, oport, pki) as (pool, host, port):
                await fetch(pool, get(host, port))
                origin.close_all()
                await asyncio.sleep(0.1)
                assert await fetch(pool, get(host, port, "/a")) == b"/a #2"
                assert pool.counters()["retries"] == 0 and origin.connections == 2
                origin.drop_next = 1
                assert await fetch(pool, get(host, port, "/b")) == b"/b #4"
                c = pool.counters()
        assert c["retries"] == 1 and origin.connections == 3
    run(main())


@pytest.mark.parametrize("early", [False, True])
def test_proxy_407_on_connect_is_the_auth_error(pki, early):
    """The proxy's 407 on the CONNECT of an origin connection raises UpstreamAuthError
    (also when the ClientHello went right behind the CONNECT)."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs["video"], ["http/1.1"])) as oport:
            proxy = ConnectProxy(oport)
            async with serve(proxy.handle) as pport:
                async with UpstreamPool(f"http://127.0.0.1:{pport}", origin_ca_file=ca,
                                        warm_tunnels=0, early_connect_data=early) as pool:
                    with pytest.raises(UpstreamAuthError, match="rejected the credentials.*CONNECT video.test:443"):
                        await pool.request(get("video.test"), None)
        assert origin.connections == 0
    run(main())


def test_drain_closes_idle_origin_connections_through_a_proxy(pki):
    """drain() (network change) closes idle origin TLS connections; the next request opens a new one."""
    ca, certs = pki
    origin = Origin()

    async def main():
        async with serve(origin.handle, server_ctx(certs["video"], ["http/1.1"])) as oport:
            proxy = ConnectProxy(oport)
            async with serve(proxy.handle) as pport:
                async with UpstreamPool(f"http://u:p@127.0.0.1:{pport}", origin_ca_file=ca,
                                        warm_tunnels=0) as pool:
                    await fetch(pool, get("video.test"))
                    assert origin.open == 1
                    pool.drain()
                    assert await wait_for(lambda: origin.open == 0)
                    await fetch(pool, get("video.test"))
                    c = pool.counters()
        assert len(proxy.connects) == 2 and c["origin_tls_opened"] == 2 and c["origin_tls_resumed"] == 1
    run(main())


@pytest.mark.parametrize("alpn", [["http/1.1"], ["h2"]])
def test_tls_in_tls_through_an_https_proxy(pki, alpn):
    """Through an https:// proxy (ALPN http/1.1: CONNECT on the TLS connection; h2: a
    CONNECT stream), origin TLS rides inside and is reused, h1 and h2 origins alike."""
    ca, certs = pki

    async def main():
        for origin_alpn in (["http/1.1"], ["h2"]):
            origin = Origin()
            async with serve(origin.handle, server_ctx(certs["video"], origin_alpn)) as oport:
                proxy = (H2ConnectProxy if alpn == ["h2"] else ConnectProxy)(oport)
                async with serve(proxy.handle, server_ctx(certs["local"], alpn)) as pport:
                    async with UpstreamPool(f"https://u:p@localhost:{pport}", ca_file=ca, origin_ca_file=ca,
                                            warm_tunnels=0) as pool:
                        for i in range(3):
                            assert await fetch(pool, get("video.test", target=f"/x{i}")) == f"/x{i} #{i + 1}".encode()
                        assert len(proxy.connects) == 1 and origin.connections == 1
                        many = await asyncio.gather(*(fetch(pool, get("video.test", target="/m"))
                                                      for _ in range(4)))
                        c = pool.counters()
            assert all(b.startswith(b"/m #") for b in many)
            assert origin.requests[0]["proto"] == ("h2" if origin_alpn == ["h2"] else "h1")
            if origin_alpn == ["h2"]:
                assert origin.connections == 1 and c["origin_tls_opened"] == 1
            assert c["origin_tls_reused"] >= 2
    run(main())


def test_large_bodies_both_ways_through_an_h2_proxy(pki):
    """TLS over an HTTP/2 CONNECT stream carries a 1 MB upload (past the proxy's 64 KiB
    stream window) and a 3 MB download intact, to h1 and h2 origins."""
    ca, certs = pki

    async def body():
        for _ in range(16):
            yield b"u" * 65536

    async def main():
        for origin_alpn in (["http/1.1"], ["h2"]):
            origin = Origin()
            async with serve(origin.handle, server_ctx(certs["video"], origin_alpn)) as oport:
                proxy = H2ConnectProxy(oport)
                async with serve(proxy.handle, server_ctx(certs["local"], ["h2"])) as pport:
                    async with UpstreamPool(f"https://u:p@localhost:{pport}", ca_file=ca, origin_ca_file=ca) as pool:
                        head = RequestHead("POST", Endpoint("https", "video.test", 443), "/up", (), 1 << 20)
                        resp = await pool.request(head, body())
                        assert await resp.read() == b"/up #1 got 1048576"
                        await resp.aclose()
                        got = await fetch(pool, get("video.test", target=f"/big?n={3 << 20}"))
                        assert got == bytes(range(256)) * (3 << 12)
                        assert pool.counters()["origin_tls_opened"] == 1
    run(main())
