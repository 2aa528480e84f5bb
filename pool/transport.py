"""Opening upstream sockets (marked, optionally TLS with ALPN) and the socket ByteStream.

Async adapter: the only place in the pool that creates sockets. Every socket the pool
opens carries ``SO_MARK`` when a mark is given, so the routing policy sends it out the
physical interface instead of back into the capture.

A :class:`Transport` owns its receive buffer (an asyncio protocol of its own, not a
StreamReader): it can say what it holds and hand it over (to splice a body, to detach
the socket) through public calls only, with the same backpressure a StreamReader has.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import ssl
import threading

from atlantic.pool.errors import MarkPermissionError, UpstreamTimeoutError, UpstreamUnreachableError
from atlantic.pool.splice import ByteCounters, RelayEnd, RelayResult, set_reset_on_close, splice_body

__all__ = ["Transport", "SocketStream", "open_transport", "proxy_tls_context", "READ_LIMIT"]

READ_LIMIT = 256 * 1024  # reading pauses beyond 2x this buffered: backpressure
# One socket read (or, over TLS, the plaintext of one pass over the records received) lands
# in a scratch buffer and leaves it as a bytes object of its own size. Below the allocator's
# mmap threshold (client/allocator.py, 128 KiB), so a read costs no mmap and no fresh pages:
# asyncio's own reads allocate 256 KiB each (one per TLS record), which with that threshold
# was an mmap, an mremap and a munmap per 16 KB record.
READ_CHUNK = 64 * 1024
_scratch = threading.local()  # the event loop's thread copies out before it reads again


def _scratch_buffer() -> memoryview:
    view = getattr(_scratch, "view", None)
    if view is None:
        view = _scratch.view = memoryview(bytearray(READ_CHUNK))
    return view


def proxy_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS to the proxy: system CAs (or ``ca_file``), ALPN offering h2 then http/1.1."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class _Buffered(asyncio.BufferedProtocol):
    """What asyncio tells a connection: bytes in (kept here), EOF, loss, write pressure.

    asyncio reads into the thread's scratch buffer (:data:`READ_CHUNK`); each read is kept
    as one bytes chunk. Reading pauses while more than ``2 * limit`` bytes wait and resumes
    once at most ``limit`` do (StreamReader's thresholds). ``take`` joins chunks once, or
    hands a lone chunk over as it is (measured on an HTTP/2 download: a bytearray's append,
    slice and delete were 20% of the CPU).
    """

    def __init__(self, limit: int, over_tls: bool) -> None:
        self.limit = limit
        self.scratch = _scratch_buffer()  # made on the loop's thread, which does the reads
        self.over_tls = over_tls
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0  # bytes in ``chunks``
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self.closed = asyncio.Event()
        self.read_paused = False  # by us, for a full buffer
        self.write_paused = False  # by asyncio, for a full send buffer
        self.data_waiter: asyncio.Future[None] | None = None
        self.drain_waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.scratch[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self._wake()
        if self.size > 2 * self.limit and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return not self.over_tls  # plain TCP stays half-open: a tunnel may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is None:
            self.eof = True
        else:
            self.error = exc
        self._wake()
        for waiter in self.drain_waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
        self.closed.set()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def take(self, max_bytes: int | None = None) -> bytes:
        """Remove and return up to ``max_bytes`` (all if None) of what is buffered."""
        chunks = self.chunks
        if max_bytes is not None and max_bytes <= 0:
            return b""
        if max_bytes is None or max_bytes >= self.size:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            parts, left = [], max_bytes
            while left > 0:
                chunk = chunks.popleft()
                if len(chunk) > left:  # split: the rest goes back in front
                    chunks.appendleft(chunk[left:])
                    chunk = chunk[:left]
                parts.append(chunk)
                left -= len(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.size -= len(data)
        if self.read_paused and self.size <= self.limit:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    def _wake(self) -> None:
        waiter, self.data_waiter = self.data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Transport:
    """A connected upstream socket (plain or TLS), what the handshake chose, and when.

    Also the :class:`~atlantic.pool.h2conn.ByteTransport` an HTTP/2 connection needs
    (``read``, ``write``, ``drain``, ``abort``, ``aclose``).
    """

    __slots__ = ("alpn", "opened_at", "_tr", "_p")

    def __init__(self, transport: asyncio.Transport, protocol: _Buffered, alpn: str | None,
                 opened_at: float) -> None:
        self._tr = transport
        self._p = protocol
        self.alpn = alpn
        self.opened_at = opened_at

    @property
    def is_tls(self) -> bool:
        """True over TLS to the proxy (the bytes on the socket are encrypted)."""
        return self._tr.get_extra_info("ssl_object") is not None

    @property
    def socket(self) -> socket.socket | None:
        """The connected socket as asyncio exposes it (None once gone)."""
        return self._tr.get_extra_info("socket")

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` received; ``b""`` at EOF; raises what broke the connection."""
        p = self._p
        if p.error is not None:
            raise p.error
        if not p.size and not p.eof:
            if p.data_waiter is not None:
                raise RuntimeError("Transport.read() called while another read is waiting")
            if p.read_paused:  # cannot happen with an empty buffer; never wait on a paused socket
                p.read_paused = False
                self._tr.resume_reading()
            p.data_waiter = asyncio.get_running_loop().create_future()
            try:
                await p.data_waiter
            finally:
                p.data_waiter = None
            if not p.size and p.error is not None:
                raise p.error
        return p.take(max_bytes)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (see :meth:`drain`); dropped once the connection is closing."""
        if not self._tr.is_closing():
            self._tr.write(data)

    async def drain(self) -> None:
        """Wait while the send buffer is full; raises ``ConnectionError`` once the connection is lost."""
        p = self._p
        if p.error is not None:
            raise p.error
        if self._tr.is_closing():
            await asyncio.sleep(0)  # let asyncio deliver connection_lost first
        if p.lost:
            raise ConnectionResetError("Connection lost")
        if not p.write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        p.drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            p.drain_waiters.remove(waiter)

    def can_write_eof(self) -> bool:
        """True when a half-close is possible (not over TLS)."""
        return self._tr.can_write_eof()

    def write_eof(self) -> None:
        """FIN after what is queued."""
        self._tr.write_eof()

    def is_closing(self) -> bool:
        """True once closing or closed (by us, or the connection was lost)."""
        return self._tr.is_closing()

    def is_peer_closed(self) -> bool:
        """True if the peer closed (EOF) or sent unsolicited bytes while we were idle.

        The event loop reads the socket as data comes, so an idle keep-alive connection
        the peer closed already shows EOF here; either way it must not be reused.
        """
        p = self._p
        return p.eof or p.error is not None or bool(p.size) or self._tr.is_closing()

    def take_buffered(self) -> bytes:
        """Remove and return every byte received and not read yet."""
        return self._p.take()

    def is_plain_tcp(self) -> bool:
        """True for an open connection without TLS: its bytes can be spliced."""
        return not self.is_tls and not self._tr.is_closing()

    async def splice_to(self, dst: socket.socket, count: int, *, first: bytes = b"",
                        counters: ByteCounters | None = None) -> RelayResult:
        """Send ``first``, then the next ``count`` bytes received here, to ``dst`` with
        ``os.splice`` (see :func:`~atlantic.pool.splice.splice_body`): what is already
        buffered goes first, nothing past ``count`` is read, and the connection stays
        usable afterwards. Plain TCP only (``is_plain_tcp``).
        """
        if not self.is_plain_tcp():
            return RelayResult(RelayEnd.UPSTREAM_RESET, 0, 0, "connection closed")
        tr = self._tr
        tr.pause_reading()  # asyncio must not read the body: it goes socket to socket
        held = self._p.take(count)
        # asyncio refuses a second registration of a transport's descriptor; a dup works.
        src = socket.socket(fileno=os.dup(self.socket.fileno()))
        try:
            return await splice_body(src, dst, count - len(held), counters, first=first + held)
        finally:
            src.close()  # the dup only: the connection stays open
            self._p.read_paused = False  # resumed now; a full buffer pauses it again
            tr.resume_reading()

    def take_socket(self) -> tuple[socket.socket, bytes]:
        """Take the connection out of asyncio: a new non-blocking socket object for it and
        the bytes already received. The transport is unusable afterwards (the caller owns
        the socket); over TLS the socket carries encrypted bytes (check ``is_tls``).
        """
        tr = self._tr
        tr.pause_reading()
        buffered = self._p.take()
        sock = socket.socket(fileno=os.dup(self.socket.fileno()))
        sock.setblocking(False)
        tr.abort()  # closes asyncio's descriptor only: the dup keeps the connection
        return sock, buffered

    def abort(self) -> None:
        """Close at once (RST when possible), no flushing."""
        sock = self.socket
        if sock is not None:
            set_reset_on_close(sock)
        self._tr.abort()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close cleanly, bounded by ``timeout``; abort if the peer does not cooperate."""
        if self._tr.is_closing():
            self._tr.abort()
            return
        self._tr.close()
        try:
            await asyncio.wait_for(self._p.closed.wait(), timeout)
        except TimeoutError:
            self._tr.abort()


def _set_mark(sock: socket.socket, mark: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except PermissionError:
        sock.close()
        raise MarkPermissionError("cannot mark the daemon's sockets (SO_MARK needs CAP_NET_ADMIN): "
                                  "run atlantic up as root") from None


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
                        _set_mark(sock, mark)
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
            tr, protocol = await loop.create_connection(
                lambda: _Buffered(READ_LIMIT, tls is not None), sock=sock, ssl=tls,
                server_hostname=(server_hostname or host) if tls else None)
    except TimeoutError:
        raise UpstreamTimeoutError(f"{where}: no connection within {timeout:g} s") from None
    except ssl.SSLError as e:
        raise UpstreamUnreachableError(f"{where}: TLS handshake failed ({e.reason or e}): "
                                       "check the proxy's certificate and CA") from None
    except MarkPermissionError:
        raise
    except OSError as e:
        # asyncio's connect errors carry "Connect call failed (...)" as their text: say
        # what happened (refused, unreachable, ...) from the errno instead.
        why = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        raise UpstreamUnreachableError(f"{where}: cannot connect ({why})") from None
    alpn = None
    if tls is not None:
        ssl_obj = tr.get_extra_info("ssl_object")
        alpn = ssl_obj.selected_alpn_protocol() if ssl_obj is not None else None
    return Transport(tr, protocol, alpn, now)


class SocketStream:
    """A :class:`~atlantic.pool.api.ByteStream` over a socket (plain or TLS to the proxy).

    ``first``: bytes already read past a CONNECT response head, returned by the first
    read. Over plain TCP it is also a :class:`~atlantic.pool.api.DetachableStream`.
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
        return None if self._t.is_tls else self._t.socket

    def detach(self) -> tuple[socket.socket, bytes] | None:
        """Take a plain socket out of asyncio so a relay can ``os.splice`` it.

        Returns a new socket object for the same connection and the bytes already read
        from it, or None over TLS (there the bytes must pass through Python). The
        stream is unusable afterwards; the caller owns the socket.
        """
        if self._closed or self._t.is_tls:
            return None
        sock, buffered = self._t.take_socket()
        self._closed = True
        if self._on_close is not None:
            self._on_close()
        return sock, self._first + buffered

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""
        if self._first:
            data, self._first = self._first[:max_bytes], self._first[max_bytes:]
            return data
        return await self._t.read(max_bytes)

    async def write(self, data: bytes) -> None:
        """Send; waits while the socket's buffer is full."""
        self._t.write(data)
        await self._t.drain()

    # What TLS to the origin needs of its carrier (``tlsstream.Carrier``).
    def write_nowait(self, data: bytes) -> None:
        """Queue ``data`` for sending (see :meth:`drain`)."""
        self._t.write(data)

    async def drain(self) -> None:
        """Wait while the socket's buffer is full; raises once the connection is lost."""
        await self._t.drain()

    def take_buffered(self) -> bytes:
        """Remove and return the bytes received and not read yet."""
        data, self._first = self._first + self._t.take_buffered(), b""
        return data

    def is_peer_closed(self) -> bool:
        """True once the peer closed (or broke) the connection, or sent bytes not read yet."""
        return bool(self._first) or self._t.is_peer_closed()

    def is_closing(self) -> bool:
        """True once closed by us, or the connection is closing or lost."""
        return self._closed or self._t.is_closing()

    def abort(self) -> None:
        """Close at once (RST)."""
        if not self._closed:
            self._closed = True
            self._t.abort()
            if self._on_close is not None:
                self._on_close()

    async def write_eof(self) -> None:
        """FIN (not possible over TLS to the proxy: there the stream stays open)."""
        if self._t.can_write_eof():
            self._t.write_eof()

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
