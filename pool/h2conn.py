"""HTTP/2 to the proxy with h2: requests and CONNECT tunnels as streams on one connection.

Async adapter. A background task owns two jobs in one TaskGroup: the reader feeds
received bytes to the h2 state machine and hands events to the streams
(:class:`~atlantic.pool.h2stream.H2Stream`); the keep-alive sends PING after silence and
declares the connection dead when no ACK comes (:class:`~atlantic.pool.keepalive.KeepAlive`).
Our receive windows are 2^24 (connection and stream), and received data is acknowledged
only as the caller consumes it, so a slow reader holds the sender back.

The connection needs little from its transport (:class:`ByteTransport`), which a pool
:class:`~atlantic.pool.transport.Transport` provides as it is.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from atlantic.pool.errors import RemoteProtocolError, UpstreamError
from atlantic.pool.h2stream import H2Stream
from atlantic.pool.http11 import ConnectionLost
from atlantic.pool.keepalive import KeepAlive, PingKind
from atlantic.pool.transport import READ_CHUNK, Transport

__all__ = ["ByteTransport", "H2Connection", "H2Event", "H2Stream", "WINDOW"]

WINDOW = 1 << 24
READ_SIZE = READ_CHUNK  # a read as the transport keeps it: handed over without a join
CLOSE_TIMEOUT = 1.0  # aclose waits this long for the background task to stop
_S = h2.settings.SettingCodes


def _data_frame_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"DataFrame(stream_id={frame.stream_id}, {len(frame.data)} bytes)"


# h2 formats every received frame for its trace log before it knows nobody listens
# (``repr(frame)`` in ``H2Connection._receive_frame``), and hyperframe's DATA repr
# hex-encodes the whole payload to show 10 bytes of it: a fifth to a half of the CPU of a
# download (bench/profile_h2.py). A DATA frame's repr is debugging text only.
hyperframe.frame.DataFrame.__repr__ = _data_frame_repr


class H2Event(enum.Enum):
    """What a connection tells its owner (the pool) as it happens."""

    SETTINGS = "settings"  # the peer's SETTINGS arrived or changed (max streams)
    GOAWAY = "goaway"  # the peer will take no new streams
    CLOSED = "closed"  # the connection is gone


class ByteTransport(Protocol):
    """All an :class:`H2Connection` uses of its transport."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` received; ``b""`` once the peer closed or the transport did."""

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (dropped once the transport is closing)."""

    async def drain(self) -> None:
        """Wait until the transport takes more; raises ``ConnectionError`` when it is gone."""

    def abort(self) -> None:
        """Close at once."""

    async def aclose(self) -> None:
        """Close cleanly, bounded in time."""


class H2Connection:
    """An HTTP/2 client connection; ``on_event(H2Event)`` tells the pool about settings/GOAWAY/close.

    ``transport`` is a pool :class:`Transport` or anything else with the
    :class:`ByteTransport` methods (the tests' scripted peer). ``on_event`` and the
    streams' ``on_close`` run in the connection's reader
    task, so they must return promptly.
    """

    def __init__(self, transport: Transport | ByteTransport, *, name: str,
                 clock: Callable[[], float], on_event: Callable[[H2Event], None],
                 ping_interval: float = 20.0, ping_timeout: float = 10.0) -> None:
        self.transport = transport
        self.name = name
        self.clock = clock
        self.on_event = on_event
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self.streams: dict[int, H2Stream] = {}
        self.keepalive = KeepAlive(clock(), ping_interval, ping_timeout)
        self.goaway = False
        self._io: ByteTransport = transport
        self._settings = asyncio.Event()
        self._stopped = asyncio.Event()  # set once, when the connection closes or fails
        self._worker: asyncio.Task | None = None  # reader + keep-alive, see _run

    @property
    def closed(self) -> bool:
        """True once the connection closed or failed (for good)."""
        return self._stopped.is_set()

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
        self._worker = asyncio.create_task(self._run(), name=f"h2 {self.name}")
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
        try:
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            raise ConnectionLost(f"{self.name}: cannot open a stream ({e})", retryable=True) from None
        stream = H2Stream(self, sid, on_close, sent_end=end_stream)
        self.streams[sid] = stream
        self._flush()
        return stream

    # ---- used by streams (H2Stream's StreamConn) ----
    def send_window(self, sid: int) -> int:
        """Bytes stream ``sid`` may send now: both flow-control windows and the frame size."""
        try:
            return min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            raise ConnectionLost(f"{self.name}: stream {sid} closed", retryable=False) from None

    def send_data(self, sid: int, data: bytes) -> None:
        """One DATA frame on ``sid`` (at most :meth:`send_window` bytes)."""
        self.h2.send_data(sid, data)
        self._flush()

    def end_stream(self, sid: int) -> None:
        """END_STREAM on ``sid`` (nothing if the stream is already closed)."""
        try:
            self.h2.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    def reset(self, sid: int) -> None:
        """RST_STREAM (CANCEL) on ``sid`` (nothing if the stream is already closed)."""
        try:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._flush()

    def acknowledge(self, sid: int, size: int) -> None:
        """WINDOW_UPDATE for ``size`` bytes the caller consumed from ``sid``."""
        try:
            self.h2.acknowledge_received_data(size, sid)
        except (h2.exceptions.StreamClosedError, KeyError):
            # the stream is gone: still give the connection-level window back
            self.h2.increment_flow_control_window(size)
        self._flush()

    async def drain(self) -> None:
        """Wait until the transport takes more; a lost transport fails the connection."""
        try:
            await self._io.drain()
        except (ConnectionError, OSError) as e:
            self._fail(ConnectionLost(f"{self.name}: connection lost ({e})", retryable=False))
            raise ConnectionLost(f"{self.name}: connection lost ({e})", retryable=False) from None

    def forget(self, sid: int) -> None:
        """Drop a finished stream."""
        self.streams.pop(sid, None)

    def _flush(self) -> None:
        if out := self.h2.data_to_send():
            self._io.write(out)

    # ---- background: one task, one TaskGroup ----
    async def _run(self) -> None:
        """The reader and the keep-alive: they end once the connection is closed."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader())
                tg.create_task(self._pinger())
        except Exception:
            # a bug in either: fail the streams rather than leave their readers waiting
            self._fail(ConnectionLost(f"{self.name}: HTTP/2 connection failed", retryable=False))
            raise

    async def _reader(self) -> None:
        try:
            while not self.closed:
                data = await self._io.read(READ_SIZE)
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
        if type(event) is h2.events.DataReceived:  # nearly every event: checked first
            if stream := self.streams.get(event.stream_id):
                stream.on_data(event.data, event.flow_controlled_length)
            else:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream:
            stream.on_headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream.on_end()
        elif isinstance(event, h2.events.StreamReset) and stream:
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                stream.on_reset(None)  # the peer is done and nothing was lost
            else:
                stream.on_reset(UpstreamError(
                    f"{self.name} reset stream {event.stream_id} (error {event.error_code!s})"))
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if event.stream_id == 0 else ([stream] if stream else [])
            for s in targets:
                s.on_window()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings.set()
            self.on_event(H2Event.SETTINGS)
            for s in list(self.streams.values()):
                s.on_window()  # INITIAL_WINDOW_SIZE may have grown
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True  # open_stream refuses from now on
            # h2 closes its whole state machine on GOAWAY (python-hyper/h2#1181), yet
            # streams up to last_stream_id may still complete (RFC 9113 6.8): reopen it.
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, s in list(self.streams.items()):
                if sid > last:  # never processed by the peer: safe to retry elsewhere
                    s.on_error(ConnectionLost(f"{self.name} sent GOAWAY", retryable=True))
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
            try:
                async with asyncio.timeout(max(0.05, action.wait)):
                    await self._stopped.wait()
            except TimeoutError:
                pass

    def _fail(self, error: Exception) -> None:
        """Fail every stream with ``error``, drop the transport, tell the owner (once)."""
        if self.closed:
            return
        self._stopped.set()
        for s in list(self.streams.values()):
            s.on_error(error)
        self._settings.set()
        self._io.abort()
        self.on_event(H2Event.CLOSED)

    async def aclose(self) -> None:
        """GOAWAY, close the transport, stop the background task (bounded)."""
        if not self.closed:
            try:
                self.h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self._stopped.set()
            for s in list(self.streams.values()):
                s.on_error(ConnectionLost(f"{self.name}: connection closed", retryable=False))
            await self._io.aclose()
            self.on_event(H2Event.CLOSED)
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            await asyncio.wait([worker], timeout=CLOSE_TIMEOUT)
