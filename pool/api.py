"""The pool's interface as the forwarder sees it: request heads in, response streams out.

The forwarder (the application side, h11) parses what the application sent and hands
the pool an origin-form request with only end-to-end headers; the pool decides how it
travels (absolute-form to an HTTP proxy with Proxy-Authorization, a stream on an HTTP/2
proxy connection, origin-form on a pooled origin connection for ``direct``, or, for
``https``, on a pooled TLS connection to the origin inside a tunnel) and on which connection. Bodies stream both ways; nothing here buffers a whole body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the pure cores that import this stay free of I/O modules
    import socket

    from atlantic.pool.splice import ByteCounters

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The origin as the application addressed it.

    Scheme ``http``, or ``https`` once the forwarder terminated the application's TLS:
    such requests ride pooled TLS connections to the origin (see ``pool.origin_tls``).
    """

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """``host:port`` (IPv6 literals bracketed), default port omitted."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 80 if self.scheme == "http" else 443
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One request to send: origin-form target, end-to-end headers (Host included).

    ``body_length``: 0 no body, n a body of exactly n bytes, None a body of unknown
    length (sent chunked on HTTP/1.1, as DATA frames until END_STREAM on HTTP/2).
    """

    method: str
    endpoint: Endpoint
    target: str
    headers: Headers
    body_length: int | None = 0

    @property
    def is_idempotent(self) -> bool:
        """Safe to retry once on a fresh connection if a reused one was closed under it."""
        return self.method in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE") and self.body_length == 0


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The final response head from upstream, hop-by-hop headers already removed.

    ``body_length`` as in RequestHead; None means "until the stream ends".
    """

    status: int
    reason: str
    headers: Headers
    body_length: int | None
    http_version: str


class ResponseStream(Protocol):
    """A response whose body is read as it arrives."""

    head: ResponseHead

    async def read(self, max_bytes: int = 262144) -> bytes:
        """The next piece of the body; ``b""`` once the body is complete."""
        ...

    async def aclose(self) -> None:
        """Release the upstream connection: reused if the body was read to the end, else closed."""
        ...


@runtime_checkable
class SplicingResponseStream(ResponseStream, Protocol):
    """A response whose body can also move socket to socket without entering Python.

    Optional (HTTP/1.1 over plain TCP): the forwarder checks
    ``isinstance(stream, SplicingResponseStream)``, then splices when
    ``can_splice_body()`` says so and reads otherwise.
    """

    def can_splice_body(self) -> bool:
        """True if ``splice_body_to`` can carry the body (Content-Length, nothing read yet)."""
        ...

    async def splice_body_to(self, sock: socket.socket, counters: ByteCounters | None = None) -> None:
        """Move the whole body to ``sock`` (``counters.bytes_down`` grows as it goes), then
        release the upstream connection as if it had been read to the end.

        Raises ``RemoteProtocolError`` if the upstream fails mid-body, ``OSError`` if
        ``sock`` does; either way the upstream connection is closed, never reused.
        """
        ...


class ByteStream(Protocol):
    """A two-way byte stream: a tunnel through the upstream (socket or HTTP/2 stream)."""

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``; returns once the transport can take more (backpressure)."""
        ...

    async def write_eof(self) -> None:
        """Half-close: no more data from us (FIN, or END_STREAM on HTTP/2)."""
        ...

    async def aclose(self, *, reset: bool = False) -> None:
        """Close both ways; ``reset`` aborts (RST / RST_STREAM) instead of closing cleanly."""
        ...


@runtime_checkable
class DetachableStream(ByteStream, Protocol):
    """A tunnel that may leave asyncio as a plain socket, for a relay with ``os.splice``.

    Optional: the forwarder checks ``isinstance(stream, DetachableStream)`` and relays
    through Python when the stream is not one or ``detach()`` says no.
    """

    def detach(self) -> tuple[socket.socket, bytes] | None:
        """The connected socket (now the caller's) and the bytes already read from it,
        or None when the bytes cannot go socket to socket (e.g. TLS to the proxy); the
        stream stays usable then. After a detach the stream is unusable.
        """
        ...


class Pool(Protocol):
    """Every flow's way to the upstream."""

    async def request(self, head: RequestHead, body: AsyncIterator[bytes] | None) -> ResponseStream:
        """Send one request (body streamed from ``body``); returns once the response head is in.

        Raises the errors of ``atlantic.pool.errors``: ``UpstreamUnreachableError`` /
        ``UpstreamTimeoutError`` (no connection), ``UpstreamAuthError`` (407 from the proxy)
        ``RemoteProtocolError`` (the upstream broke HTTP), ``OriginTLSError`` (``https``: the
        origin's certificate did not verify, or TLS to it failed; ``.origin`` and ``.reason``
        for a 502 that names it); :class:`LocalProtocolError`
        (an ``UpstreamError`` too) when ``head`` cannot be written as HTTP at all.
        Header values are Latin-1 text: each character stands for the byte it was decoded
        from, so bytes the application sent travel unchanged.
        """
        ...

    async def open_tunnel(self, host: str, port: int) -> ByteStream:
        """A tunnel to ``host:port`` (CONNECT over a warm connection or an HTTP/2 stream).

        :class:`LocalProtocolError` if ``host`` is not an ASCII name or IP literal, or
        ``port`` not 1-65535."""
        ...

    async def start(self) -> None:
        """Start the background work (idle expiry, warm connections); requests also do."""
        ...

    def drain(self) -> None:
        """Close idle and warm connections: new flows go to another upstream now."""
        ...

    def counters(self) -> dict:
        """Counters for ``status`` (requests, connections_opened, reused, h2_streams, ...)."""
        ...

    async def aclose(self) -> None:
        """Close every connection (bounded)."""
        ...
