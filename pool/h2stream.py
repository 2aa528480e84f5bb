"""One HTTP/2 stream of an :class:`~atlantic.pool.h2conn.H2Connection`, as the caller sees it.

Async adapter, driven from two sides. The caller reads the response head and body and
writes the request body (``response/read/write/write_eof/aclose``). The connection's
reader tells the stream what arrived through the ``on_*`` methods, and the stream asks
its connection (:class:`StreamConn`) to send, acknowledge and forget. Neither side
touches the other's private state.

Two halves, as in RFC 9113 5.1: ``ended`` (the peer sent END_STREAM) and ``sent_end``
(we did). The stream closes, once, when both halves are done or it fails.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from atlantic.pool.errors import RemoteProtocolError

__all__ = ["H2Stream", "StreamConn"]


class StreamConn(Protocol):
    """What a stream asks of its connection (every call takes the stream id)."""

    def send_window(self, sid: int) -> int:
        """Bytes we may send now (flow control and frame size); raises when the stream is gone."""

    def send_data(self, sid: int, data: bytes) -> None:
        """Queue one DATA frame (within :meth:`send_window`)."""

    def end_stream(self, sid: int) -> None:
        """Queue END_STREAM."""

    def reset(self, sid: int) -> None:
        """Queue RST_STREAM (CANCEL)."""

    def acknowledge(self, sid: int, size: int) -> None:
        """Give ``size`` flow-controlled bytes back to the peer (WINDOW_UPDATE)."""

    async def drain(self) -> None:
        """Wait until the transport takes more."""

    def forget(self, sid: int) -> None:
        """The stream is closed: drop it."""


class H2Stream:
    """One stream: response head, received DATA (acknowledged when read), flow-controlled send.

    The connection reports with :meth:`on_headers`, :meth:`on_data`, :meth:`on_end`,
    :meth:`on_reset`, :meth:`on_error` and :meth:`on_window`; ``on_close`` runs once,
    when the stream closes.
    """

    __slots__ = ("conn", "id", "status", "headers", "ended", "error", "_sent_end", "_closed",
                 "_chunks", "_offset", "_wake", "_head", "_on_close", "_pending")

    def __init__(self, conn: StreamConn, stream_id: int, on_close: Callable[[], None], *,
                 sent_end: bool = False) -> None:
        self.conn = conn
        self.id = stream_id
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.ended = False  # the peer sent END_STREAM (or RST_STREAM NO_ERROR)
        self.error: Exception | None = None
        self._sent_end = sent_end  # True when the HEADERS carried END_STREAM
        self._closed = False
        self._chunks: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self._offset = 0
        self._wake = asyncio.Event()  # data, end, reset, window update
        self._head = asyncio.get_running_loop().create_future()
        self._on_close = on_close
        self._pending = b""  # write_nowait's bytes beyond the send window

    @property
    def sent_end(self) -> bool:
        """True once we sent END_STREAM: no more data from us."""
        return self._sent_end

    @property
    def closed(self) -> bool:
        """True once the stream is closed (both halves done, reset or failed)."""
        return self._closed

    # ---- the caller's side ----
    async def response(self) -> tuple[int, list[tuple[str, str]]]:
        """Wait for the response head: ``(status, headers)`` (pseudo-headers removed)."""
        await self._head
        return self.status, self.headers  # type: ignore[return-value]

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Received data, up to ``max_bytes`` (as many DATA frames as fit, so one read and
        one acknowledgement per buffer, not per 16 KB frame), acknowledged to the peer as
        it is consumed; ``b""`` at END_STREAM."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._wake.clear()
            await self._wake.wait()
        return self._take(max_bytes)

    def read_nowait(self, max_bytes: int = 262144) -> bytes | None:
        """What :meth:`read` would return at once, without waiting: received data, ``b""``
        at END_STREAM; None if nothing is here yet or the stream failed (``read`` raises).
        Lets the relay send a small response's head and body in one write."""
        if self._chunks:
            return self._take(max_bytes)
        if self.error is None and self.ended:
            return b""
        return None

    def _take(self, max_bytes: int) -> bytes:
        chunks = self._chunks
        pieces = []
        size = ack = 0
        while chunks and size < max_bytes:
            data, flow = chunks[0]
            offset, room = self._offset, max_bytes - size
            if len(data) - offset <= room:
                chunks.popleft()
                self._offset = 0
                piece = data[offset:] if offset else data
                ack += flow  # a frame is acknowledged when its last byte is consumed
            else:
                piece = data[offset:offset + room]
                self._offset = offset + room
            pieces.append(piece)
            size += len(piece)
        if ack:
            self.conn.acknowledge(self.id, ack)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def write(self, data: bytes) -> None:
        """Send DATA within the peer's flow-control windows (waits for WINDOW_UPDATE)."""
        view = memoryview(data)
        while view:
            if self.error is not None:
                raise self.error
            size = self.conn.send_window(self.id)
            if size <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.conn.send_data(self.id, view[:size].tobytes())
            view = view[size:]
            await self.conn.drain()

    # What TLS to the origin needs of its carrier (``tlsstream.Carrier``).
    def write_nowait(self, data: bytes) -> None:
        """Queue ``data``: sent now within the flow-control windows, the rest as they open
        (on WINDOW_UPDATE, or at :meth:`drain`). Dropped once the stream failed."""
        if self.error is None and not self._sent_end:
            self._pending += data
            self._send_pending()

    async def drain(self) -> None:
        """Wait until everything :meth:`write_nowait` queued is sent; raises once the stream failed."""
        while True:
            if self.error is not None:
                raise self.error
            self._send_pending()
            if not self._pending:
                break
            self._wake.clear()
            await self._wake.wait()
        await self.conn.drain()

    def take_buffered(self) -> bytes:
        """Remove and return the data received and not read yet (acknowledged to the peer)."""
        out = []
        while self._chunks:
            data, flow = self._chunks.popleft()
            out.append(data[self._offset:])
            self._offset = 0
            if flow:
                self.conn.acknowledge(self.id, flow)
        return b"".join(out)

    def is_peer_closed(self) -> bool:
        """True once the peer ended or reset the stream, or it failed, or data waits unread."""
        return self.ended or self.error is not None or self._closed or bool(self._chunks)

    def is_closing(self) -> bool:
        """True once the stream is closed or failed."""
        return self._closed or self.error is not None

    def abort(self) -> None:
        """RST_STREAM (CANCEL) and close, at once."""
        if not self._closed:
            if self.error is None:
                self.conn.reset(self.id)
            self._close()

    def _send_pending(self) -> None:
        while self._pending and self.error is None:
            try:
                size = self.conn.send_window(self.id)
            except Exception as e:  # noqa: BLE001 - the stream is gone: fail it, never the caller
                self.on_error(e)
                return
            if size <= 0:
                return
            piece, self._pending = self._pending[:size], self._pending[size:]
            self.conn.send_data(self.id, piece)

    async def write_eof(self) -> None:
        """END_STREAM: no more data from us."""
        if not self._sent_end and self.error is None:
            self._sent_end = True
            self.conn.end_stream(self.id)
            await self.conn.drain()
            if self.ended:
                self._close()

    async def aclose(self, *, reset: bool = False) -> None:
        """Close: END_STREAM if we had not; RST_STREAM (CANCEL) if the peer is still sending."""
        if self._closed:
            return
        if self.error is None:
            if not reset and not self._sent_end:
                self._sent_end = True
                self.conn.end_stream(self.id)
            if reset or not self.ended:
                self.conn.reset(self.id)
        self._close()

    # ---- what the connection tells the stream ----
    def on_headers(self, headers: list[tuple[bytes | str, bytes | str]]) -> None:
        """The response HEADERS arrived: keep ``:status`` and the regular headers."""
        for name, value in headers:
            n = name.decode() if isinstance(name, bytes) else name
            v = value.decode("latin-1") if isinstance(value, bytes) else value
            if n == ":status":
                self.status = int(v)
            elif not n.startswith(":"):
                self.headers.append((n, v))
        if not self._head.done():
            self._head.set_result(None)

    def on_data(self, data: bytes, flow: int) -> None:
        """DATA arrived; its ``flow`` (flow-controlled length) is acknowledged once read."""
        if not data:  # nothing to read (padding only): a read must never see it as the end
            if flow:
                self.conn.acknowledge(self.id, flow)
            return
        self._chunks.append((data, flow))
        self._wake.set()

    def on_end(self) -> None:
        """The peer sent END_STREAM; the stream closes if we had sent ours."""
        self._end()
        if self._sent_end:
            self._close()

    def on_reset(self, error: Exception | None) -> None:
        """The peer sent RST_STREAM: ``None`` for NO_ERROR (a clean end, nothing was lost),
        else the error the caller's next read or write raises. Closes the stream."""
        if error is not None:
            self.on_error(error)
            return
        self._sent_end = True  # nothing more may be sent after a reset
        self._end()
        self._close()

    def on_error(self, error: Exception) -> None:
        """The stream failed (connection lost, GOAWAY, reset): reads and writes raise
        ``error`` (the first one wins). Closes the stream."""
        if self.error is None:
            self.error = error
        self._wake.set()
        self._fail_head(error)
        self._close()

    def on_window(self) -> None:
        """Our send window may have grown (WINDOW_UPDATE, SETTINGS): send what waits, wake a writer."""
        if self._pending:
            self._send_pending()
        self._wake.set()

    # ---- internal ----
    def _end(self) -> None:
        self.ended = True
        self._wake.set()
        self._fail_head(RemoteProtocolError("stream ended without a response head"))

    def _fail_head(self, error: Exception) -> None:
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody may be waiting

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.forget(self.id)
            self._wake.set()
            self._fail_head(self.error or RemoteProtocolError("stream closed"))
            self._on_close()
