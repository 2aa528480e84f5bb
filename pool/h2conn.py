"""HTTP/2 to the proxy with h2: requests and CONNECT tunnels as streams on one connection.

Async adapter. One reader task feeds received bytes to the h2 state machine and hands
events to the streams; a keep-alive task sends PING after silence and declares the
connection dead when no ACK comes (:class:`~atlantic.pool.counters.KeepAlive`). Our
receive windows are 2^24 (connection and stream), and received data is acknowledged
only as the caller consumes it, so a slow reader holds the sender back.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from atlantic.pool.errors import RemoteProtocolError, UpstreamError
from atlantic.pool.keepalive import KeepAlive, PingKind
from atlantic.pool.http11 import ConnectionLost
from atlantic.pool.transport import Transport

__all__ = ["H2Connection", "H2Event", "H2Stream", "WINDOW"]

WINDOW = 1 << 24
_S = h2.settings.SettingCodes


class H2Event(enum.Enum):
    """What a connection tells its owner (the pool) as it happens."""

    SETTINGS = "settings"  # the peer's SETTINGS arrived or changed (max streams)
    GOAWAY = "goaway"  # the peer will take no new streams
    CLOSED = "closed"  # the connection is gone


class H2Stream:
    """One stream: response head, received DATA (acknowledged when read), flow-controlled send."""

    __slots__ = ("conn", "id", "status", "headers", "_chunks", "_offset", "ended", "error",
                 "_wake", "_head", "_sent_end", "_closed", "_on_close")

    def __init__(self, conn: H2Connection, stream_id: int, on_close: Callable[[], None]) -> None:
        self.conn = conn
        self.id = stream_id
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self._chunks: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self._offset = 0
        self.ended = False
        self.error: Exception | None = None
        self._wake = asyncio.Event()  # data, end, reset, window update
        self._head = asyncio.get_running_loop().create_future()
        self._sent_end = False
        self._closed = False
        self._on_close = on_close

    async def response(self) -> tuple[int, list[tuple[str, str]]]:
        """Wait for the response head: ``(status, headers)`` (pseudo-headers removed)."""
        await self._head
        return self.status, self.headers  # type: ignore[return-value]

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Received data, acknowledged to the peer as it is consumed; ``b""`` at END_STREAM."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._wake.clear()
            await self._wake.wait()
        data, flow = self._chunks[0]
        if self._offset == 0 and len(data) <= max_bytes:
            self._chunks.popleft()
            piece = data
        else:
            piece = data[self._offset:self._offset + max_bytes]
            self._offset += len(piece)
            if self._offset < len(data):
                flow = 0  # acknowledge the whole frame when its last byte is consumed
            else:
                self._chunks.popleft()
                self._offset = 0
        if flow:
            self.conn.acknowledge(self.id, flow)
        return piece

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

    async def write_eof(self) -> None:
        """END_STREAM: no more data from us."""
        if not self._sent_end and self.error is None:
            self._sent_end = True
            self.conn.end_stream(self.id)
            await self.conn.drain()
            self._maybe_closed()

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

    def _maybe_closed(self) -> None:
        if (self.ended and self._sent_end) or self.error is not None:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.forget(self.id)
            self._wake.set()
            if not self._head.done():
                self._head.set_exception(self.error or RemoteProtocolError("stream closed"))
                self._head.exception()  # retrieved: nobody may be waiting
            self._on_close()

    # ---- called by the connection's reader ----
    def _on_head(self, headers: list[tuple[bytes | str, bytes | str]]) -> None:
        for name, value in headers:
            n = name.decode() if isinstance(name, bytes) else name
            v = value.decode("latin-1") if isinstance(value, bytes) else value
            if n == ":status":
                self.status = int(v)
            elif not n.startswith(":"):
                self.headers.append((n, v))
        if not self._head.done():
            self._head.set_result(None)

    def _on_data(self, data: bytes, flow: int) -> None:
        self._chunks.append((data, flow))
        self._wake.set()

    def _on_end(self) -> None:
        self.ended = True
        self._wake.set()
        if not self._head.done():
            self._head.set_exception(RemoteProtocolError("stream ended without a response head"))
            self._head.exception()

    def _on_error(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake.set()
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()


class H2Connection:
    """An HTTP/2 client connection; ``on_event(H2Event)`` tells the pool about settings/GOAWAY/close."""

    def __init__(self, transport: Transport, *, name: str, clock: Callable[[], float],
                 on_event: Callable[[H2Event], None], ping_interval: float = 20.0,
                 ping_timeout: float = 10.0) -> None:
        self.transport = transport
        self.name = name
        self.clock = clock
        self.on_event = on_event
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self.streams: dict[int, H2Stream] = {}
        self.keepalive = KeepAlive(clock(), ping_interval, ping_timeout)
        self.goaway = False
        self.closed = False
        self._settings = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    @property
    def max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (capped at 1000)."""
        return min(1000, self.h2.remote_settings.max_concurrent_streams or 100)

    async def start(self, timeout: float = 10.0) -> None:
        """Preface + our SETTINGS (windows 2^24, no push); wait for the peer's SETTINGS."""
        self.h2.initiate_connection()
        # update_settings (not local_settings) is what actually tells the peer
        self.h2.update_settings({_S.INITIAL_WINDOW_SIZE: WINDOW, _S.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(WINDOW - 65535)
        self._flush()
        for coro in (self._reader(), self._pinger()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            async with asyncio.timeout(timeout):
                await self._settings.wait()
        except TimeoutError:
            await self.aclose()
            raise ConnectionLost(f"{self.name}: no HTTP/2 SETTINGS within {timeout:g} s",
                                 retryable=False) from None
        if self.closed:
            raise ConnectionLost(f"{self.name}: closed during the HTTP/2 handshake",
                                 retryable=False)

    def is_available(self) -> bool:
        """True when new streams may be opened."""
        return not (self.goaway or self.closed)

    def open_stream(self, headers: list[tuple[str, str]], *, end_stream: bool,
                    on_close: Callable[[], None]) -> H2Stream:
        """HEADERS on a new stream. Raises :class:`ConnectionLost` (retryable) if it cannot."""
        if not self.is_available():
            raise ConnectionLost(f"{self.name}: connection is going away", retryable=True)
        sid = self.h2.get_next_available_stream_id()
        stream = H2Stream(self, sid, on_close)
        try:
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            raise ConnectionLost(f"{self.name}: cannot open a stream ({e})", retryable=True) from None
        self.streams[sid] = stream
        if end_stream:
            stream._sent_end = True
        self._flush()
        return stream

    # ---- used by streams ----
    def send_window(self, sid: int) -> int:
        try:
            return min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            raise ConnectionLost(f"{self.name}: stream {sid} closed", retryable=False) from None

    def send_data(self, sid: int, data: bytes) -> None:
        self.h2.send_data(sid, data)
        self._flush()

    def end_stream(self, sid: int) -> None:
        try:
            self.h2.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    def reset(self, sid: int) -> None:
        try:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._flush()

    def acknowledge(self, sid: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, sid)
        except (h2.exceptions.StreamClosedError, KeyError):
            # the stream is gone: still give the connection-level window back
            self.h2.increment_flow_control_window(size)
        self._flush()

    async def drain(self) -> None:
        try:
            await self.transport.writer.drain()
        except (ConnectionError, OSError) as e:
            self._fail(ConnectionLost(f"{self.name}: connection lost ({e})", retryable=False))
            raise ConnectionLost(f"{self.name}: connection lost ({e})", retryable=False) from None

    def _flush(self) -> None:
        if out := self.h2.data_to_send():
            if not self.transport.writer.is_closing():
                self.transport.writer.write(out)

    # ---- background ----
    async def _reader(self) -> None:
        reader = self.transport.reader
        try:
            while not self.closed:
                data = await reader.read(262144)
                if not data:
                    self._fail(ConnectionLost(f"{self.name} closed the HTTP/2 connection",
                                              retryable=False))
                    return
                self.keepalive.on_activity(self.clock())
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self._flush()
                    self._fail(RemoteProtocolError(f"{self.name} broke HTTP/2: {e}"))
                    return
                for event in events:
                    self._dispatch(event)
                self._flush()
        except (ConnectionError, OSError) as e:
            self._fail(ConnectionLost(f"{self.name}: connection lost ({e})", retryable=False))

    def _dispatch(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream:
            stream._on_head(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream:
                stream._on_data(event.data, event.flow_controlled_length)
            else:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream._on_end()
            stream._maybe_closed()
        elif isinstance(event, h2.events.StreamReset) and stream and event.error_code == 0:
            stream._sent_end = True  # RST_STREAM(NO_ERROR): the peer is done, nothing was lost
            stream._on_end()
            stream._close()
        elif isinstance(event, h2.events.StreamReset) and stream:
            stream._on_error(UpstreamError(
                f"{self.name} reset stream {event.stream_id} (error {event.error_code!s})"))
            stream._close()
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if event.stream_id == 0 else ([stream] if stream else [])
            for s in targets:
                s._wake.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings.set()
            self.on_event(H2Event.SETTINGS)
            for s in self.streams.values():
                s._wake.set()  # INITIAL_WINDOW_SIZE may have grown
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, s in list(self.streams.items()):
                if sid > last:  # never processed by the peer: safe to retry elsewhere
                    s._on_error(ConnectionLost(f"{self.name} sent GOAWAY", retryable=True))
                    s._close()
            self.on_event(H2Event.GOAWAY)

    async def _pinger(self) -> None:
        while not self.closed:
            action = self.keepalive.due(self.clock())
            if action.kind is PingKind.DEAD:
                self._fail(ConnectionLost(f"{self.name}: no answer to PING", retryable=False))
                return
            if action.kind is PingKind.PING:
                self.h2.ping(os.urandom(8))
                self._flush()
                self.keepalive.on_ping_sent(self.clock())
            await asyncio.sleep(max(0.05, action.wait))

    def _fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        for s in list(self.streams.values()):
            s._on_error(error)
            s._close()
        self._settings.set()
        self.transport.abort()
        self.on_event(H2Event.CLOSED)

    def forget(self, sid: int) -> None:
        """Drop a finished stream; on GOAWAY the last one closes the connection."""
        self.streams.pop(sid, None)

    async def aclose(self) -> None:
        """GOAWAY, close the socket, stop the background tasks (bounded)."""
        if not self.closed:
            try:
                self.h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self.closed = True
            for s in list(self.streams.values()):
                s._on_error(ConnectionLost(f"{self.name}: connection closed", retryable=False))
                s._close()
            await self.transport.aclose()
            self.on_event(H2Event.CLOSED)
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
