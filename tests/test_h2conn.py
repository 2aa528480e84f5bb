"""H2Connection and H2Stream without sockets: a scripted peer (h2's own server side) on an
in-memory transport, in the spirit of mitmproxy's Playbook tests.

What the client writes reaches the peer's h2 object at once (frames in: ``peer.events``);
the test script decides which frames go back (``peer.respond``, ``peer.reset``, ...).
The peer answers only what h2 answers by itself (SETTINGS and PING ACKs, and WINDOW_UPDATE
when ``auto_ack``). Time is a fake clock; the only real waits are short polls, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import GoAwayFrame

from atlantic.pool.errors import UpstreamError
from atlantic.pool.h2conn import WINDOW, H2Connection, H2Event
from atlantic.pool.http11 import ConnectionLost
from atlantic.pool.keepalive import PingKind

TIMEOUT = 10
_S = h2.settings.SettingCodes
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "origin.test"), (":path", "/")]
POST = [(":method", "POST"), (":scheme", "http"), (":authority", "origin.test"), (":path", "/up")]
CONNECT = [(":method", "CONNECT"), (":authority", "origin.test:443")]


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


async def until(predicate, what: str, limit: float = 3.0) -> None:
    """Poll ``predicate`` (1 ms steps) until true; fail naming ``what`` after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.001)


class FakeClock:
    """The connection's clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class MemoryTransport:
    """The ByteTransport an H2Connection needs, in memory: writes go to ``peer`` at once,
    reads return what the peer fed (``b""`` after ``feed_eof`` or a close)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.closed = False
        self._buf = bytearray()
        self._eof = False
        self._ready = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._ready.set()

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    async def read(self, max_bytes: int) -> bytes:
        while not self._buf and not self._eof:
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return data

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.peer.receive(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("transport closed")

    def abort(self) -> None:
        self.closed = True
        self.feed_eof()

    async def aclose(self) -> None:
        self.abort()


class Peer:
    """The proxy's side: h2's server, scripted by the test."""

    def __init__(self, settings: dict | None = None, *, auto_ack: bool = False,
                 silent: bool = False) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings or {})
        self.transport = MemoryTransport(self)
        self.events: list[h2.events.Event] = []
        self.received: dict[int, bytearray] = defaultdict(bytearray)
        self.auto_ack = auto_ack  # give flow-control credit back as DATA arrives
        self.mute = silent  # reads, never answers (not even PING)
        self.h2.initiate_connection()
        if not silent:
            self.flush()

    # ---- frames in ----
    def receive(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            self.events.append(ev)
            if isinstance(ev, h2.events.DataReceived):
                self.received[ev.stream_id] += ev.data
                if self.auto_ack:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        if not self.mute:
            self.flush()

    def seen(self, kind: type, stream_id: int | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind)
                and (stream_id is None or e.stream_id == stream_id)]

    # ---- frames out ----
    def flush(self) -> None:
        if out := self.h2.data_to_send():
            self.transport.feed(out)

    def respond(self, sid: int, status: int = 200, headers=(), body: bytes = b"",
                end: bool = True) -> None:
        self.h2.send_headers(sid, [(":status", str(status)), *headers], end_stream=end and not body)
        if body:
            self.data(sid, body, end=end)
        self.flush()

    def data(self, sid: int, body: bytes, *, end: bool = False) -> None:
        """DATA within the frame size (the body must fit the window)."""
        size = self.h2.max_outbound_frame_size
        for i in range(0, len(body), size):
            self.h2.send_data(sid, body[i:i + size], end_stream=end and i + size >= len(body))
        self.flush()

    def send_window(self, sid: int) -> int:
        return min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)

    def reset(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        self.h2.reset_stream(sid, code)
        self.flush()

    def window_update(self, sid: int, size: int) -> None:
        self.h2.increment_flow_control_window(size, stream_id=sid or None)
        self.flush()

    def settings(self, values: dict) -> None:
        self.h2.update_settings(values)
        self.flush()

    def goaway(self, last_stream_id: int) -> None:
        """A graceful GOAWAY, raw: h2 would refuse to serve the remaining streams after its own."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        self.transport.feed(frame.serialize())


@contextlib.asynccontextmanager
async def session(peer: Peer | None = None, *, clock: FakeClock | None = None,
                  ping_interval: float = 20.0, ping_timeout: float = 10.0):
    """A started H2Connection to ``peer``; yields ``(conn, peer, events)``, closes after."""
    peer = peer or Peer()
    events: list[H2Event] = []
    conn = H2Connection(peer.transport, name="proxy h2.test", clock=clock or FakeClock(),
                        on_event=events.append, ping_interval=ping_interval,
                        ping_timeout=ping_timeout)
    await conn.start(2.0)
    try:
        yield conn, peer, events
    finally:
        await conn.aclose()


def closer() -> tuple[list[int], Callable[[], None]]:
    """An ``on_close`` that counts its calls."""
    calls: list[int] = []
    return calls, lambda: calls.append(1)


async def read_all(stream) -> bytes:
    out = bytearray()
    while piece := await stream.read():
        out += piece
    return bytes(out)


def test_settings_exchange_sets_max_streams_and_our_windows():
    """The peer's MAX_CONCURRENT_STREAMS becomes max_streams (and follows changes); ours
    announce 2^24 windows and no push."""
    async def main():
        async with session(Peer({_S.MAX_CONCURRENT_STREAMS: 7})) as (conn, peer, events):
            assert conn.max_streams == 7 and events == [H2Event.SETTINGS]
            assert peer.h2.remote_settings.initial_window_size == WINDOW
            assert peer.h2.remote_settings.enable_push == 0
            assert peer.h2.outbound_flow_control_window == WINDOW
            assert peer.seen(h2.events.SettingsAcknowledged)
            peer.settings({_S.MAX_CONCURRENT_STREAMS: 3})
            await until(lambda: conn.max_streams == 3, "max_streams follows the new SETTINGS")
            assert events == [H2Event.SETTINGS, H2Event.SETTINGS]
    run(main())


def test_start_without_peer_settings_fails_in_one_line():
    """No SETTINGS from the peer: start() raises a non-retryable ConnectionLost and the
    connection reports CLOSED once."""
    async def main():
        peer = Peer(silent=True)
        events: list[H2Event] = []
        conn = H2Connection(peer.transport, name="proxy h2.test", clock=FakeClock(),
                            on_event=events.append)
        with pytest.raises(ConnectionLost, match="no HTTP/2 SETTINGS") as e:
            await conn.start(0.05)
        assert not e.value.retryable and "\n" not in str(e.value)
        assert events == [H2Event.CLOSED] and conn.closed and peer.transport.closed
    run(main())


def test_request_and_response_with_body():
    """A POST's headers and body reach the peer; its response head and body come back; the
    stream closes once and is forgotten."""
    async def main():
        async with session() as (conn, peer, _):
            calls, on_close = closer()
            stream = conn.open_stream(POST, end_stream=False, on_close=on_close)
            await stream.write(b"hello, ")
            await stream.write(b"proxy")
            await stream.write_eof()
            (req,) = peer.seen(h2.events.RequestReceived)
            assert req.headers == POST and bytes(peer.received[stream.id]) == b"hello, proxy"
            assert peer.seen(h2.events.StreamEnded, stream.id)
            peer.respond(stream.id, 200, [("content-type", "text/plain")], b"response body")
            assert await stream.response() == (200, [("content-type", "text/plain")])
            assert await read_all(stream) == b"response body"
            assert calls == [1] and stream.closed and conn.streams == {}
            await stream.aclose()
            assert calls == [1] and not peer.seen(h2.events.StreamReset)
    run(main())


def test_writer_waits_for_window_update_and_loses_nothing():
    """With a 16-byte stream window the writer blocks until WINDOW_UPDATE (or a larger
    INITIAL_WINDOW_SIZE) arrives, then completes; every byte arrives once, in order."""
    async def main():
        async with session(Peer({_S.INITIAL_WINDOW_SIZE: 16})) as (conn, peer, _):
            stream = conn.open_stream(POST, end_stream=False, on_close=lambda: None)
            body = bytes(range(60))
            writer = asyncio.create_task(stream.write(body))
            await until(lambda: len(peer.received[stream.id]) == 16, "the first window's worth")
            await asyncio.sleep(0)
            assert not writer.done()
            peer.window_update(stream.id, 16)
            await until(lambda: len(peer.received[stream.id]) == 32, "a second window's worth")
            assert not writer.done()
            peer.settings({_S.INITIAL_WINDOW_SIZE: 1000})  # grows every stream's window
            await writer
            assert bytes(peer.received[stream.id]) == body
    run(main())


def test_writer_waits_for_the_connection_window():
    """The connection-level window (65535 until the peer grows it) holds the writer back
    too; a WINDOW_UPDATE on stream 0 releases it."""
    async def main():
        async with session(Peer({_S.INITIAL_WINDOW_SIZE: 1 << 20})) as (conn, peer, _):
            stream = conn.open_stream(POST, end_stream=False, on_close=lambda: None)
            body = b"x" * 70000
            writer = asyncio.create_task(stream.write(body))
            await until(lambda: len(peer.received[stream.id]) == 65535, "the connection window")
            await asyncio.sleep(0)
            assert not writer.done()
            peer.window_update(0, 10000)
            await writer
            assert bytes(peer.received[stream.id]) == body
    run(main())


def test_peer_reset_with_an_error_fails_the_stream_in_one_line():
    """RST_STREAM with an error code: read, write and response() raise UpstreamError in
    one line; the stream closes once; the connection stays usable."""
    async def main():
        async with session() as (conn, peer, _):
            calls, on_close = closer()
            stream = conn.open_stream(POST, end_stream=False, on_close=on_close)
            peer.respond(stream.id, 200, end=False)
            assert (await stream.response())[0] == 200
            peer.reset(stream.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            with pytest.raises(UpstreamError, match="reset stream 1") as e:
                await stream.read()
            assert "\n" not in str(e.value)
            with pytest.raises(UpstreamError, match="reset stream 1"):
                await stream.write(b"more")
            assert calls == [1] and conn.streams == {} and conn.is_available()

            early = conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            peer.reset(early.id, h2.errors.ErrorCodes.REFUSED_STREAM)
            with pytest.raises(UpstreamError, match="reset stream 3"):
                await early.response()
    run(main())


def test_peer_reset_no_error_is_a_clean_end():
    """RST_STREAM(NO_ERROR) after a response: what arrived is read, then a clean end; the
    stream closes once and our aclose sends nothing more."""
    async def main():
        async with session() as (conn, peer, _):
            calls, on_close = closer()
            stream = conn.open_stream(POST, end_stream=False, on_close=on_close)
            peer.respond(stream.id, 413, body=b"too large", end=False)
            peer.reset(stream.id, h2.errors.ErrorCodes.NO_ERROR)
            assert (await stream.response())[0] == 413
            assert await read_all(stream) == b"too large"
            assert stream.error is None and stream.closed and calls == [1]
            await stream.aclose()
            assert not peer.seen(h2.events.StreamReset) and calls == [1]
    run(main())


def test_goaway_fails_streams_above_last_id_and_lets_the_others_finish():
    """GOAWAY(last=3): stream 5 fails with a retryable ConnectionLost, streams 1 and 3
    complete, no new stream opens, and the owner hears GOAWAY (not CLOSED)."""
    async def main():
        async with session() as (conn, peer, events):
            s1, s3, s5 = (conn.open_stream(GET, end_stream=True, on_close=lambda: None)
                          for _ in range(3))
            assert (s1.id, s3.id, s5.id) == (1, 3, 5)
            peer.goaway(3)
            await until(lambda: H2Event.GOAWAY in events, "the owner hears GOAWAY")
            with pytest.raises(ConnectionLost, match="GOAWAY") as e:
                await s5.response()
            assert e.value.retryable and "\n" not in str(e.value)
            assert conn.goaway and not conn.is_available()
            with pytest.raises(ConnectionLost) as e:
                conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            assert e.value.retryable
            peer.respond(s1.id, body=b"one")
            peer.respond(s3.id, body=b"three")
            assert await read_all(s1) == b"one" and await read_all(s3) == b"three"
            assert events == [H2Event.SETTINGS, H2Event.GOAWAY] and not conn.closed
        assert events[-1] is H2Event.CLOSED
    run(main())


def test_connection_lost_mid_body_fails_readers_and_reports_closed_once():
    """EOF from the transport mid-body: what arrived is read, then ConnectionLost (not
    retryable, one line); every stream fails; CLOSED is reported exactly once."""
    async def main():
        async with session() as (conn, peer, events):
            calls, on_close = closer()
            body = conn.open_stream(GET, end_stream=True, on_close=on_close)
            waiting = conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            peer.respond(body.id, 200, body=b"partial", end=False)
            assert (await body.response())[0] == 200
            peer.transport.feed_eof()
            assert await body.read() == b"partial"
            with pytest.raises(ConnectionLost, match="closed the HTTP/2 connection") as e:
                await body.read()
            assert not e.value.retryable and "\n" not in str(e.value)
            with pytest.raises(ConnectionLost):
                await waiting.response()
            assert conn.closed and calls == [1] and events.count(H2Event.CLOSED) == 1
            with pytest.raises(ConnectionLost):
                conn.open_stream(GET, end_stream=True, on_close=lambda: None)
        assert events.count(H2Event.CLOSED) == 1
    run(main())


def test_large_bodies_both_ways_arrive_intact_within_flow_control():
    """5 MB up against the peer's 64 KiB windows and 20 MB down (more than our 16 MiB
    window, so it only finishes if we acknowledge what we read) arrive intact."""
    up = hashlib.shake_256(b"up").digest(5_000_000)
    down = hashlib.shake_256(b"down").digest(20_000_000)

    async def main():
        async with session(Peer(auto_ack=True)) as (conn, peer, _):
            stream = conn.open_stream(CONNECT, end_stream=False, on_close=lambda: None)
            peer.respond(stream.id, 200, end=False)
            assert (await stream.response())[0] == 200

            async def upload():
                for i in range(0, len(up), 100_000):
                    await stream.write(up[i:i + 100_000])
                await stream.write_eof()

            async def serve():
                sent = 0
                while sent < len(down):
                    size = min(peer.send_window(stream.id), len(down) - sent)
                    if size <= 0:
                        await asyncio.sleep(0.001)  # until our reader gives credit back
                        continue
                    peer.data(stream.id, down[sent:sent + size], end=sent + size == len(down))
                    sent += size

            got, *_ = await asyncio.gather(read_all(stream), upload(), serve())
            assert got == down and bytes(peer.received[stream.id]) == up
            assert peer.seen(h2.events.StreamEnded, stream.id) and stream.closed
    run(main())


def test_ping_after_silence_ack_keeps_alive_and_no_ack_is_dead():
    """Silent past ping_interval (fake clock): a PING goes out and its ACK keeps the
    connection; a PING left unanswered past ping_timeout fails it, and its streams."""
    async def main():
        clock = FakeClock()
        # tiny interval/timeout: the keep-alive looks again every 50 ms; the fake clock decides
        async with session(clock=clock, ping_interval=5.0e-3,
                           ping_timeout=5.0e-3) as (conn, peer, events):
            assert not peer.seen(h2.events.PingReceived)
            clock.now = 10.0
            await until(lambda: len(peer.seen(h2.events.PingReceived)) == 1, "a PING")
            # the ACK counted as activity: later silence asks for a new PING, not DEAD
            await until(lambda: conn.keepalive.due(10.01).kind is PingKind.PING, "the ACK")
            stream = conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            assert not conn.closed

            peer.mute = True
            clock.now = 20.0
            await until(lambda: len(peer.seen(h2.events.PingReceived)) == 2, "a second PING")
            clock.now = 30.0
            await until(lambda: conn.closed, "the connection declared dead")
            assert events.count(H2Event.CLOSED) == 1
            with pytest.raises(ConnectionLost, match="no answer to PING"):
                await stream.response()
    run(main())


def test_aclose_sends_goaway_and_leaves_no_task_behind():
    """aclose(): GOAWAY to the peer, CLOSED once, no background task left; twice is fine."""
    async def main():
        async with session() as (conn, peer, events):
            stream = conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            await conn.aclose()
            assert peer.seen(h2.events.ConnectionTerminated)
            with pytest.raises(ConnectionLost, match="connection closed"):
                await stream.response()
            await conn.aclose()
            assert events.count(H2Event.CLOSED) == 1
            assert asyncio.all_tasks() == {asyncio.current_task()}
    run(main())


class RecordingConn:
    """A StreamConn that records what the stream asks for (acknowledgements above all)."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def acknowledge(self, sid: int, size: int) -> None:
        self.acks.append(size)

    def forget(self, sid: int) -> None:
        pass


def test_read_joins_frames_up_to_max_bytes_and_acknowledges_each_frame_once_consumed():
    """One read takes as many DATA frames as fit in ``max_bytes`` (splitting the last),
    and a frame's flow-controlled length (padding included) is acknowledged, in one call
    per read, only once its last byte was read."""
    from atlantic.pool.h2stream import H2Stream

    async def main():
        conn = RecordingConn()
        stream = H2Stream(conn, 1, lambda: None)
        stream.on_data(b"a" * 10, 10)
        stream.on_data(b"b" * 10, 12)  # padded: 12 flow-controlled bytes
        stream.on_data(b"c" * 10, 10)
        assert await stream.read(25) == b"a" * 10 + b"b" * 10 + b"c" * 5
        assert conn.acks == [22]
        assert await stream.read(25) == b"c" * 5
        assert conn.acks == [22, 10]
        stream.on_end()
        assert await stream.read(25) == b""
    run(main())


def test_an_empty_data_frame_is_acknowledged_at_once_and_never_read_as_the_end():
    """A DATA frame with no data (padding only) gives its credit back at once and the
    next read still waits for real data (b"" means END_STREAM only)."""
    from atlantic.pool.h2stream import H2Stream

    async def main():
        conn = RecordingConn()
        stream = H2Stream(conn, 1, lambda: None)
        stream.on_data(b"", 5)
        assert conn.acks == [5]
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0)
        assert not reader.done()
        stream.on_data(b"x", 1)
        assert await reader == b"x"
    run(main())


def test_unread_data_is_not_acknowledged_so_a_slow_reader_holds_the_peer_back():
    """Backpressure: the peer's send window shrinks by what we hold unread and comes back
    only as the reader consumes it (h2 sends WINDOW_UPDATE once half our window is read)."""
    body = b"\x5a" * (9 << 20)  # past half our window: h2 would send WINDOW_UPDATE if acked

    async def main():
        async with session() as (conn, peer, _):
            stream = conn.open_stream(GET, end_stream=True, on_close=lambda: None)
            peer.respond(stream.id, 200, body=body, end=False)
            await stream.response()
            await until(lambda: len(stream._chunks) * 16384 >= len(body) - 16384, "all DATA in")
            assert peer.h2.local_flow_control_window(stream.id) == WINDOW - len(body)
            got = 0
            while got < len(body):
                got += len(await stream.read(1 << 20))
            await until(lambda: peer.h2.local_flow_control_window(stream.id) >= WINDOW - (1 << 20),
                        "the window given back")
    run(main())


def test_a_data_frame_repr_does_not_encode_its_payload():
    """h2 formats every received frame for its trace log: a DATA frame's repr stays short."""
    import atlantic.pool.h2conn  # noqa: F401 - installs the cheap repr
    from hyperframe.frame import DataFrame

    text = repr(DataFrame(3, b"\xa5" * 16384))
    assert len(text) < 80 and "16384" in text and "a5a5" not in text
