"""Opening upstream sockets (marked, optionally TLS with ALPN) and the socket ByteStream.

Async adapter: the only place in the pool that creates sockets. Every socket the pool
opens carries ``SO_MARK`` when a mark is given, so the routing policy sends it out the
physical interface instead of back into the capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from dataclasses import dataclass

from atlantic.pool.errors import UpstreamTimeoutError, UpstreamUnreachableError
from atlantic.pool.splice import ByteCounters, RelayEnd, RelayResult, splice_body

__all__ = ["Transport", "SocketStream", "open_transport", "proxy_tls_context", "READ_LIMIT"]

READ_LIMIT = 256 * 1024  # the StreamReader pauses the socket beyond ~2x this: backpressure


def proxy_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS to the proxy: system CAs (or ``ca_file``), ALPN offering h2 then http/1.1."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


@dataclass(eq=False, slots=True)
class Transport:
    """A connected stream pair and what the handshake chose."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    alpn: str | None
    opened_at: float

    def is_peer_closed(self) -> bool:
        """True if the peer closed (EOF) or sent unsolicited bytes while we were idle.

        The event loop reads the socket as data comes, so an idle keep-alive connection
        the peer closed already shows EOF here; either way it must not be reused.
        """
        r = self.reader
        # StreamReader has no public "bytes buffered" accessor; a non-empty buffer on an
        # idle connection (e.g. an unsolicited 408) makes it unusable too.
        return (r.at_eof() or r.exception() is not None or bool(getattr(r, "_buffer", b""))
                or self.writer.is_closing())

    def is_plain_tcp(self) -> bool:
        """True for an open connection without TLS: its bytes can be spliced."""
        return self.writer.get_extra_info("ssl_object") is None and not self.writer.is_closing()

    async def splice_to(self, dst: socket.socket, count: int, *, first: bytes = b"",
                        counters: ByteCounters | None = None) -> RelayResult:
        """Send ``first``, then the next ``count`` bytes received here, to ``dst`` with
        ``os.splice`` (see :func:`~atlantic.pool.splice.splice_body`): what the
        StreamReader already holds goes first, nothing past ``count`` is read, and the
        connection stays usable afterwards. Plain TCP only (``is_plain_tcp``).
        """
        if not self.is_plain_tcp():
            return RelayResult(RelayEnd.UPSTREAM_RESET, 0, 0, "connection closed")
        transport, reader = self.writer.transport, self.reader
        transport.pause_reading()
        # StreamReader has no public "take what is buffered": take it while paused.
        buffered = reader._buffer
        held = bytes(buffered[:count])
        del buffered[:len(held)]
        # asyncio refuses a second registration of a transport's descriptor; a dup works.
        src = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        try:
            return await splice_body(src, dst, count - len(held), counters, first=first + held)
        finally:
            src.close()  # the dup only: the connection stays open
            reader._maybe_resume_transport()  # if its full buffer had paused the socket
            transport.resume_reading()

    def abort(self) -> None:
        """Close at once (RST when possible), no flushing."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close cleanly, bounded by ``timeout``; abort if the peer does not cooperate."""
        if self.writer.is_closing():
            self.writer.transport.abort()
            return
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (TimeoutError, OSError, ssl.SSLError):
            self.writer.transport.abort()


async def open_transport(host: str, port: int, *, now: float, mark: int | None = None,
                         tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                         timeout: float = 10.0, what: str = "proxy") -> Transport:
    """Connect to ``host:port`` (TCP_NODELAY, SO_MARK), then TLS if ``tls`` is given.

    Raises :class:`UpstreamUnreachableError` / :class:`UpstreamTimeoutError`, one line
    naming ``what`` (e.g. ``proxy http://p:3128``) and the address.
    """
    loop = asyncio.get_running_loop()
    where = f"{what} {host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            last: OSError | None = None
            for family, type_, proto, _, addr in infos:
                sock = socket.socket(family, type_, proto)
                try:
                    if mark is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, addr)
                except OSError as e:
                    sock.close()
                    last = e
                    continue
                except BaseException:
                    sock.close()
                    raise
                break
            else:
                raise last or OSError(f"no address for {host}")
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=tls, limit=READ_LIMIT,
                server_hostname=(server_hostname or host) if tls else None)
    except TimeoutError:
        raise UpstreamTimeoutError(f"{where}: no connection within {timeout:g} s") from None
    except ssl.SSLError as e:
        raise UpstreamUnreachableError(f"{where}: TLS handshake failed ({e.reason or e}): "
                                       "check the proxy's certificate and CA") from None
    except OSError as e:
        raise UpstreamUnreachableError(f"{where}: cannot connect ({e.strerror or e})") from None
    alpn = None
    if tls is not None:
        ssl_obj = writer.get_extra_info("ssl_object")
        alpn = ssl_obj.selected_alpn_protocol() if ssl_obj is not None else None
    return Transport(reader, writer, alpn, now)


class SocketStream:
    """A :class:`~atlantic.pool.api.ByteStream` over a socket (plain or TLS to the proxy).

    ``first``: bytes already read past a CONNECT response head, returned by the first
    read. ``socket`` is exposed so a relay may splice plain sockets directly.
    """

    __slots__ = ("_t", "_first", "_on_close", "_closed")

    def __init__(self, transport: Transport, first: bytes = b"", on_close=None) -> None:
        self._t = transport
        self._first = first
        self._on_close = on_close
        self._closed = False

    @property
    def socket(self) -> socket.socket | None:
        """The underlying socket (None for TLS to the proxy, where bytes are encrypted)."""
        if self._t.writer.get_extra_info("ssl_object") is not None:
            return None
        return self._t.writer.get_extra_info("socket")

    def detach(self) -> tuple[socket.socket, bytes] | None:
        """Take a plain socket out of asyncio so a relay can ``os.splice`` it.

        Returns a new socket object for the same connection and the bytes already read
        from it, or None over TLS (there the bytes must pass through Python). The
        stream is unusable afterwards; the caller owns the socket.
        """
        if self._closed or self.socket is None:
            return None
        transport = self._t.writer.transport
        transport.pause_reading()
        # StreamReader has no public "take what is buffered"; read it without waiting.
        buffered = bytes(getattr(self._t.reader, "_buffer", b""))
        raw = transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.setblocking(False)
        transport.abort()  # closes asyncio's descriptor only: the dup keeps the connection
        self._closed = True
        if self._on_close is not None:
            self._on_close()
        return sock, self._first + buffered

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""
        if self._first:
            data, self._first = self._first[:max_bytes], self._first[max_bytes:]
            return data
        return await self._t.reader.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """Send; waits while the socket's buffer is full."""
        self._t.writer.write(data)
        await self._t.writer.drain()

    async def write_eof(self) -> None:
        """FIN (not possible over TLS to the proxy: there the stream stays open)."""
        if self._t.writer.can_write_eof():
            self._t.writer.write_eof()

    async def aclose(self, *, reset: bool = False) -> None:
        """Close both ways (``reset``: RST)."""
        if self._closed:
            return
        self._closed = True
        if reset:
            self._t.abort()
        else:
            await self._t.aclose()
        if self._on_close is not None:
            self._on_close()
