"""Shared pieces of the dispatcher's loopback tests: a real TLS client's first flight, an
echo server, and a Dispatcher over a ``direct`` pool on a loopback listener."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl

from atlantic.forwarder.dispatch import Dispatcher
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstream import parse_upstream


@functools.cache
def client_hello() -> bytes:
    """The first flight of a real Python TLS client (a ClientHello record, SNI example.test)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def to(port: int):
    """A NAT lookup that sends every flow to 127.0.0.1:``port``."""
    return lambda nat_port: (("127.0.0.1", nat_port), ("127.0.0.1", port))


@contextlib.asynccontextmanager
async def echo_server():
    """A TCP echo server on loopback; yields its port."""
    async def echo(r, w):
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


@contextlib.asynccontextmanager
async def dispatching(lookup, *, redirected: bool = False, **kw):
    """A Dispatcher (``kw`` passed on) over a ``direct`` pool on a loopback listener (as the
    kernel's redirect target with ``redirected``); yields (dispatcher, listening port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    async with UpstreamPool("direct", warm_tunnels=0) as pool:
        d = Dispatcher(parse_upstream("direct"), lookup, pool, idle_timeout=30.0, **kw)
        await d.serve(listener, redirected=redirected)
        try:
            yield d, listener.getsockname()[1]
        finally:
            await d.aclose(2.0)
            listener.close()
