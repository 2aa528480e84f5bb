"""Content-Length bodies spliced socket to socket by the pool (``splice_body_to``), on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from urllib.parse import parse_qs, urlsplit

import pytest

from atlantic.pool.errors import RemoteProtocolError
from atlantic.pool.splice import RelayCounters, abort_socket
from atlantic.lab.pki import make_ca, make_server_cert
from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.pool import UpstreamPool

MB = 1024 * 1024


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def pattern(n: int) -> bytes:
    """``n`` bytes of 0..255 repeated, so a lost, doubled or moved byte shows."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


async def respond(w: asyncio.StreamWriter, method: str, target: str) -> bool:
    """Answer ``/<n>`` with an n-byte Content-Length body; False once the connection must end.

    Query: ``lead=K`` the head and K body bytes in one write, the rest 0.2 s later;
    ``cut=K&how=fin|rst`` stop after K body bytes; ``junk=1`` bytes past the body;
    ``status=304``.
    """
    url = urlsplit(target)
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    n = int(url.path.strip("/"))
    status = int(q.get("status", "200"))
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {n}\r\n\r\n".encode()
    if method == "HEAD" or status == 304:
        w.write(head)
        await w.drain()
        return True
    body = pattern(n)
    lead = int(q.get("lead", "0"))
    w.write(head + body[:lead])
    await w.drain()
    if lead:
        await asyncio.sleep(0.2)
    if "cut" in q:
        w.write(body[lead:int(q["cut"])])
        await w.drain()
        if q.get("how") == "rst":
            abort_socket(w.get_extra_info("socket").dup())  # SO_LINGER 0 on the shared socket
            w.transport.abort()
        else:
            w.close()
        return False
    w.write(body[lead:] + (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if "junk" in q else b""))
    await w.drain()
    return True


@contextlib.asynccontextmanager
async def origin(ssl_context: ssl.SSLContext | None = None):
    """A keep-alive origin on loopback answering with :func:`respond`; yields (port, stats)."""
    stats = {"connections": 0}
    writers: list[asyncio.StreamWriter] = []

    async def handler(r, w):
        stats["connections"] += 1
        writers.append(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                method, target = head.decode("latin-1").split(" ", 2)[:2]
                if target.startswith("http://"):  # absolute-form: we play the proxy too
                    target = "/" + target.split("/", 3)[3]
                if not await respond(w, method, target):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1], stats
    finally:
        server.close()
        for w in writers:
            w.transport.abort()


@contextlib.asynccontextmanager
async def app_pair():
    """A connected loopback TCP pair: (the socket a body is spliced to, its peer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    app, _ = listener.accept()
    listener.close()
    for s in (app, peer):
        s.setblocking(False)
    try:
        yield app, peer
    finally:
        app.close()
        peer.close()


async def receive(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes from ``sock``, less if it ends first."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    with contextlib.suppress(ConnectionError):
        while len(data) < n and (piece := await loop.sock_recv(sock, 1 << 20)):
            data += piece
    return bytes(data)


def get(port: int, target: str, method: str = "GET") -> RequestHead:
    ep = Endpoint("http", "127.0.0.1", port)
    return RequestHead(method, ep, target, (("Host", ep.authority),))


async def splice(pool: UpstreamPool, head: RequestHead) -> tuple[bytes, RelayCounters]:
    """Request ``head`` and splice its body to a fresh app socket; what the app received."""
    resp = await pool.request(head, None)
    assert resp.can_splice_body()
    counters = RelayCounters()
    async with app_pair() as (app, peer):
        got = asyncio.ensure_future(receive(peer, resp.head.body_length))
        try:
            await resp.splice_body_to(app, counters)
        except BaseException:
            got.cancel()
            raise
        finally:
            await resp.aclose()
        return await got, counters


async def fetch(pool: UpstreamPool, head: RequestHead) -> bytes:
    """Request ``head`` and read its body through Python."""
    resp = await pool.request(head, None)
    data = bytearray()
    while piece := await resp.read():
        data += piece
    await resp.aclose()
    return bytes(data)


def test_spliced_body_arrives_intact_and_the_connection_serves_the_next_request():
    """8 MiB spliced byte for byte; the connection goes back to the pool and is reused."""

    async def go():
        async with origin() as (port, stats), UpstreamPool("direct", warm_tunnels=0) as pool:
            body, counters = await splice(pool, get(port, f"/{8 * MB}"))
            assert repr(pool).endswith("connections: 0 active, 1 idle]>")
            again = await fetch(pool, get(port, "/1000"))
            return body, counters, again, stats, pool.counters()

    body, counters, again, stats, c = run(go())
    assert body == pattern(8 * MB) and counters.bytes_down == 8 * MB
    assert again == pattern(1000)
    assert stats["connections"] == 1 and c["reused"] == 1


def test_body_bytes_read_with_the_head_go_first():
    """Bytes already read with the head (in the reader and the StreamReader) precede the spliced rest."""

    async def go():
        async with origin() as (port, stats), UpstreamPool("direct", warm_tunnels=0) as pool:
            resp = await pool.request(get(port, f"/{MB}?lead=400000"), None)
            await asyncio.sleep(0.05)  # the StreamReader takes what the socket holds
            assert resp._conn.reader.buffered()  # the case under test: the reader holds body bytes
            async with app_pair() as (app, peer):
                got = asyncio.ensure_future(receive(peer, MB))
                await resp.splice_body_to(app)
                await resp.aclose()
                body = await got
            again = await fetch(pool, get(port, "/300000"))
            return body, again, stats

    body, again, stats = run(go())
    assert body == pattern(MB) and again == pattern(300000) and stats["connections"] == 1


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_upstream_ending_mid_body_fails_and_is_not_reused(how):
    """A body cut short (FIN or RST) raises RemoteProtocolError; the connection is dropped."""

    async def go():
        async with origin() as (port, stats), UpstreamPool("direct", warm_tunnels=0) as pool:
            with pytest.raises(RemoteProtocolError, match="mid-body") as e:
                await splice(pool, get(port, f"/{MB}?cut=300000&how={how}"))
            idle = repr(pool)
            again = await fetch(pool, get(port, "/1000"))
            return str(e.value), idle, again, stats

    message, idle, again, stats = run(go())
    assert "\n" not in message
    assert idle.endswith("connections: 0 active, 0 idle]>")
    assert again == pattern(1000) and stats["connections"] == 2


def test_app_failing_mid_body_closes_the_upstream_connection():
    """The app socket reset mid-body: OSError, and the upstream connection is not reused."""

    async def go():
        async with origin() as (port, _), UpstreamPool("direct", warm_tunnels=0) as pool:
            resp = await pool.request(get(port, f"/{64 * MB}"), None)
            async with app_pair() as (app, peer):
                spliced = asyncio.ensure_future(resp.splice_body_to(app))
                await receive(peer, 100000)
                abort_socket(peer)
                with pytest.raises(OSError):
                    await spliced
            await resp.aclose()
            return repr(pool)

    assert run(go()).endswith("connections: 0 active, 0 idle]>")


def test_bytes_past_the_body_are_not_read_and_spoil_the_connection():
    """Splicing stops at Content-Length; unasked-for bytes after it keep the connection from reuse."""

    async def go():
        async with origin() as (port, stats), UpstreamPool("direct", warm_tunnels=0) as pool:
            body, _ = await splice(pool, get(port, f"/{MB}?junk=1"))
            await asyncio.sleep(0.05)
            again = await fetch(pool, get(port, "/1000"))
            return body, again, stats

    body, again, stats = run(go())
    assert body == pattern(MB) and again == pattern(1000) and stats["connections"] == 2


@pytest.mark.parametrize("method, target", [("HEAD", f"/{MB}"), ("GET", f"/{MB}?status=304")])
def test_responses_without_a_body_are_not_spliced(method, target):
    """HEAD and 304 announce a large Content-Length but carry no body: nothing to splice."""

    async def go():
        async with origin() as (port, stats), UpstreamPool("direct", warm_tunnels=0) as pool:
            resp = await pool.request(get(port, target, method), None)
            spliceable = resp.can_splice_body()
            await resp.aclose()
            again = await fetch(pool, get(port, "/1000"))
            return spliceable, again, stats

    spliceable, again, stats = run(go())
    assert not spliceable and again == pattern(1000) and stats["connections"] == 1


def test_small_body_is_copied_not_spliced():
    """Below the threshold a pipe costs more than it saves: the body is read."""

    async def go():
        async with origin() as (port, _), UpstreamPool("direct", warm_tunnels=0) as pool:
            resp = await pool.request(get(port, "/1000"), None)
            spliceable = resp.can_splice_body()
            await resp.aclose()
            return spliceable

    assert run(go()) is False


def test_tls_to_the_proxy_is_not_spliced(tmp_path):
    """An https:// proxy speaking HTTP/1.1: the bytes are encrypted, so the body is read."""
    ca = make_ca(tmp_path)
    crt, key = make_server_cert(tmp_path, "srv", "localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    ctx.set_alpn_protocols(["http/1.1"])

    async def go():
        async with origin(ctx) as (port, _):
            async with UpstreamPool(f"https://localhost:{port}", ca_file=str(ca), warm_tunnels=0) as pool:
                head = RequestHead("GET", Endpoint("http", "origin.test", 80), f"/{MB}", (("Host", "origin.test"),))
                resp = await pool.request(head, None)
                spliceable = resp.can_splice_body()
                data = bytearray()
                while piece := await resp.read():
                    data += piece
                await resp.aclose()
                return spliceable, bytes(data)

    spliceable, body = run(go())
    assert not spliceable and body == pattern(MB)
