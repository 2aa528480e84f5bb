"""CONNECT over HTTP/1.1 proxy connections, and the warm connections kept ready for it.

Async adapter. A warm connection is TCP (and TLS) already connected to the proxy with
the ``Proxy-Authorization`` value ready; a CONNECT consumes it (after the 200 it is the
application's byte stream and never returns to the pool). The pool replenishes the set
in the background.

``early=True`` sends the application's first bytes right behind the CONNECT without
waiting for the 200 (one round trip less). Off by default: see the pool README section
in the report (on a 407 Squid reads those bytes as the next request on the connection).
"""

from __future__ import annotations

import asyncio
from collections import deque

from atlantic.pool.connect import ConnectResponseParser, format_authority, raise_for_status
from atlantic.pool.errors import RemoteProtocolError, UpstreamTimeoutError
from atlantic.pool.transport import SocketStream, Transport

__all__ = ["EarlyConnectStream", "WarmSet", "connect_request", "connect_over", "read_connect_response"]


def connect_request(host: str, port: int, proxy_authorization: str | None) -> bytes:
    """``CONNECT host:port HTTP/1.1`` bytes with the ready-made ``Proxy-Authorization``."""
    authority = format_authority(host, port)
    auth = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization else ""
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode()


async def read_connect_response(t: Transport, *, proxy: str, target: str, timeout: float) -> bytes:
    """Read and check the CONNECT response head; returns bytes that followed it."""
    parser = ConnectResponseParser()
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await t.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    parser.eof()
                resp = parser.feed(data)
                if resp is not None:
                    break
    except TimeoutError:
        raise UpstreamTimeoutError(
            f"proxy {proxy} did not answer CONNECT {target} within {timeout:g} s") from None
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"proxy {proxy} on CONNECT {target}: {e}") from None
    raise_for_status(resp, proxy=proxy, target=target)
    return resp.leftover


async def connect_over(t: Transport, host: str, port: int, proxy_authorization: str | None, *,
                       proxy: str, timeout: float = 10.0, early: bool = False) -> SocketStream:
    """CONNECT on ``t``; the tunnel as a ByteStream. Closes ``t`` on any error.

    Raises the errors of :func:`atlantic.pool.connect.raise_for_status`
    (``UpstreamAuthError`` on 407), ``UpstreamTimeoutError`` or ``RemoteProtocolError``.
    """
    target = format_authority(host, port)
    try:
        t.write(connect_request(host, port, proxy_authorization))
        if early:
            return EarlyConnectStream(t, proxy=proxy, target=target, timeout=timeout)
        await t.drain()
        leftover = await read_connect_response(t, proxy=proxy, target=target, timeout=timeout)
    except BaseException:
        t.abort()
        raise
    return SocketStream(t, leftover)


class EarlyConnectStream(SocketStream):
    """A tunnel whose CONNECT answer is read lazily, at the first ``read()``.

    Writes go out at once (behind the CONNECT); the first read checks the 200 and raises
    the proxy's error (e.g. ``UpstreamAuthError``) if the tunnel was refused.
    """

    __slots__ = ("_proxy", "_target", "_timeout", "_checked")

    def __init__(self, t: Transport, *, proxy: str, target: str, timeout: float) -> None:
        super().__init__(t)
        self._proxy, self._target, self._timeout = proxy, target, timeout
        self._checked = False

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Check the CONNECT answer on the first call, then read tunnel bytes."""
        if not self._checked:
            self._checked = True
            try:
                self._first = await read_connect_response(
                    self._t, proxy=self._proxy, target=self._target, timeout=self._timeout)
            except BaseException:
                await self.aclose(reset=True)
                raise
        return await super().read(max_bytes)

    def take_buffered(self) -> bytes:
        """Nothing before the CONNECT answer was read (those bytes are the proxy's)."""
        return super().take_buffered() if self._checked else b""


class WarmSet:
    """Ready connections to HTTP/1.1 proxies, newest used first, each used at most once."""

    __slots__ = ("size", "max_age", "_items")

    def __init__(self, size: int = 2, max_age: float = 50.0) -> None:
        # well under Squid's 2 min client_idle_pconn_timeout; providers often cut sooner
        self.size, self.max_age = size, max_age
        self._items: deque[tuple[object, Transport]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: object, t: Transport) -> None:
        """Add a freshly connected transport for ``key``."""
        self._items.append((key, t))

    def take(self, key: object, now: float) -> Transport | None:
        """The newest usable transport for ``key`` (stale or closed ones are dropped)."""
        self.prune(now)
        for i in range(len(self._items) - 1, -1, -1):
            k, t = self._items[i]
            if k == key:
                del self._items[i]
                return t
        return None

    def prune(self, now: float, keep_key: object = None) -> None:
        """Close the closed, the too old and (if ``keep_key`` given) other keys' transports."""
        kept: deque[tuple[object, Transport]] = deque()
        for k, t in self._items:
            if (t.is_peer_closed() or now - t.opened_at >= self.max_age
                    or (keep_key is not None and k != keep_key)):
                t.abort()
            else:
                kept.append((k, t))
        self._items = kept

    def missing(self, key: object) -> int:
        """How many more transports for ``key`` would fill the set."""
        return max(0, self.size - sum(1 for k, _ in self._items if k == key))

    def close_all(self) -> None:
        """Abort every ready transport."""
        for _, t in self._items:
            t.abort()
        self._items.clear()
