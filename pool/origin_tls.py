"""Pooled origin connections for HTTPS requests: TLS to the origin inside a tunnel.

After the forwarder terminated an application's TLS, its requests reach the pool for
``Endpoint("https", host, port)``. They ride connections of their own, one pool key per
(proxy key, origin): a tunnel (TCP for ``direct``, CONNECT on an HTTP/1.1 proxy connection,
plain or TLS, or an HTTP/2 CONNECT stream), then TLS to the origin inside it
(:class:`~atlantic.pool.tlsstream.TLSStream`), verified fully: chain and name, against
the system store plus an optional extra CA file, never unverified. ALPN offers h2 first;
the last resumable session per key is offered to the next connection of that key (never
across keys: a rotated proxy session must not be linkable by a resumed TLS session).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from atlantic.pool.connect import format_authority
from atlantic.pool.errors import OriginTLSError, UpstreamError, UpstreamTimeoutError
from atlantic.pool.plan import PoolKey
from atlantic.pool.tlsstream import Carrier, TLSStream

__all__ = ["SessionCache", "http_origin_key", "is_http_origin_key", "is_origin_key", "open_origin_tls",
           "origin_address", "origin_key", "origin_tls_context"]

_PREFIX = "https://"
_HTTP_PREFIX = "http://"


def origin_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS to origins: system CAs plus ``ca_file`` if given, chain and host name checked,
    ALPN offering h2 then http/1.1."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def origin_key(proxy: PoolKey, host: str, port: int) -> PoolKey:
    """The pool key of TLS connections to ``host:port`` through the proxy of ``proxy``."""
    return PoolKey(proxy.upstream, proxy.credentials, _PREFIX + format_authority(host, port))


def is_origin_key(key: PoolKey) -> bool:
    """True for keys of TLS connections to an origin (see :func:`origin_key`)."""
    return key.origin.startswith(_PREFIX)


def http_origin_key(proxy: PoolKey, host: str, port: int) -> PoolKey:
    """The pool key of plain-HTTP connections to ``host:port`` carried in kept CONNECT
    tunnels through the proxy of ``proxy`` (``[pool] plain_http = "tunnel"``)."""
    return PoolKey(proxy.upstream, proxy.credentials, _HTTP_PREFIX + format_authority(host, port))


def is_http_origin_key(key: PoolKey) -> bool:
    """True for keys of plain-HTTP tunnels to an origin (see :func:`http_origin_key`)."""
    return key.origin.startswith(_HTTP_PREFIX)


def origin_address(key: PoolKey) -> tuple[str, int]:
    """``(host, port)`` of an origin key, TLS or plain (an IPv6 literal without brackets)."""
    host, _, port = key.origin.partition("://")[2].rpartition(":")
    return host.strip("[]"), int(port)


class SessionCache:
    """The last resumable TLS session per pool key, at most ``size`` keys (oldest out first)."""

    __slots__ = ("size", "_items")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[PoolKey, ssl.SSLSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: PoolKey) -> ssl.SSLSession | None:
        """The session to offer for a new connection of ``key``, or None."""
        return self._items.get(key)

    def put(self, key: PoolKey, session: ssl.SSLSession) -> None:
        """Keep ``session`` (the newest one wins: its ticket is the freshest)."""
        self._items[key] = session
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


async def open_origin_tls(tunnel: Callable[[], Awaitable[Carrier]], key: PoolKey, *,
                          ctx: ssl.SSLContext, sessions: SessionCache, now: float,
                          timeout: float) -> TLSStream:
    """A verified TLS connection to the origin of ``key`` over ``await tunnel()``.

    Raises what ``tunnel()`` raises (``UpstreamAuthError`` for a 407 on CONNECT, ...),
    :class:`OriginTLSError` when the certificate does not verify or the handshake fails
    (nothing was sent then), ``UpstreamTimeoutError`` when it takes over ``timeout`` s.
    """
    host, port = origin_address(key)
    origin = format_authority(host, port)
    carrier = await tunnel()
    stream = TLSStream(carrier, ctx, host, opened_at=now, name=f"origin {origin}",
                       session=sessions.get(key), on_session=lambda s: sessions.put(key, s))
    try:
        async with asyncio.timeout(timeout):
            await stream.handshake()
    except BaseException as e:
        stream.abort()
        if isinstance(e, UpstreamError) or not isinstance(e, Exception):
            raise
        raise _handshake_error(e, origin, timeout) from None
    return stream


def _handshake_error(e: Exception, origin: str, timeout: float) -> UpstreamError:
    """The one-line error for a failed handshake with ``origin``."""
    if isinstance(e, TimeoutError):
        return UpstreamTimeoutError(f"origin {origin}: no TLS handshake within {timeout:g} s")
    if isinstance(e, ssl.SSLCertVerificationError):
        why = e.verify_message or e.reason or "unknown reason"
        return OriginTLSError(origin, f"certificate verify failed: {why}")
    if isinstance(e, ssl.SSLError):
        return OriginTLSError(origin, f"TLS handshake failed ({e.reason or e})")
    if isinstance(e, (ConnectionError, OSError)):
        return OriginTLSError(origin, "connection closed during the TLS handshake")
    return OriginTLSError(origin, f"TLS handshake failed ({type(e).__name__}: {e})")
