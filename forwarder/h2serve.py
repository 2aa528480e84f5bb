"""HTTP/2 from the application on a TLS connection Atlantic terminated: streams ride the pool.

Thin async adapter around :class:`~.h2serve_core.H2ServerCore` and the shared pool.
Each application stream becomes one ``pool.request()`` in its own task; all of them,
the reader and the writer belong to one TaskGroup owned by the connection.

- Reader: bytes from the application into the core; events start streams, feed request
  bodies, cancel streams (RST_STREAM from the application closes the pool's response),
  wake senders when windows open. It never writes, so it never waits on a slow app.
- Writer: the only task that writes; it sends whatever the core queued. A stream that
  sent DATA waits until the writer has written it (backpressure from the socket).
- Flow control both ways: a response is read from the pool only up to the stream's send
  window (the application's) and at most ``READ_SIZE``, so a slow application holds the
  pool read back; a request body is acknowledged (WINDOW_UPDATE) as the pool takes it,
  so an upload buffers at most our stream window (1 MiB; 4 MiB per connection).
- Failures: before the response head, a one-line plain-text 502/504 (the HTTP/1 relay's
  replies); mid-body, RST_STREAM(INTERNAL_ERROR); a request for another name, 421; CONNECT,
  501; the application breaking HTTP/2, GOAWAY and close. ``note_error(message, kind)``
  gets one line per failure, never a traceback.
- End: the application closing, its GOAWAY once its streams are done, an error, or
  ``idle_timeout`` without traffic (while no stream waits on the pool): our GOAWAY, a
  bounded drain, then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from typing import Protocol

from h2.errors import ErrorCodes

from atlantic.forwarder.h2serve_core import (
    MAX_STREAMS, AppProtocolError, BodyEnded, BodyReceived, H2ServerCore, PeerGoaway, RequestStarted,
    StreamCancelled, WindowOpened, error_fields, has_body, response_fields,
)
from atlantic.forwarder.http1 import HttpCounters, NoteError
from atlantic.forwarder.http1_heads import ErrorReply, bad_request_reply, error_reply, failure_kind, where
from atlantic.pool.api import Pool, ResponseStream
from atlantic.pool.errors import LocalProtocolError, RemoteProtocolError, UpstreamError

__all__ = ["AppConnection", "serve_h2"]

RECV_SIZE = 262144
READ_SIZE = 262144  # the most one stream reads from the pool before sending it on
CLOSE_TIMEOUT = 2.0  # our GOAWAY drain, a response's aclose, the connection's aclose


class AppConnection(Protocol):
    """The application's decrypted connection, as :func:`serve_h2` uses it."""

    async def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; ``b""`` at EOF."""

    async def sendall(self, data: bytes) -> None:
        """Write ``data``; returns once the transport took it."""

    async def aclose(self, mode: str = "close") -> None:
        """Close cleanly; ``graceful``: FIN, then drain what the app still sends (bounded)."""

    def abort(self) -> None:
        """Close at once (may also be a coroutine function)."""


class _Gone(Exception):
    """The stream (or the whole connection) can no longer carry the response."""


async def serve_h2(
    conn: AppConnection,
    dst: tuple[str, int],
    pool: Pool,
    *,
    counters: HttpCounters | None,
    idle_timeout: float,
    note_error: NoteError | None,
    max_streams: int = MAX_STREAMS,
) -> None:
    """Serve the application's HTTP/2 connection until it ends; every stream rides ``pool``.

    ``dst``: (the TLS server name, port): the only origin this connection serves;
    ``max_streams``: SETTINGS_MAX_CONCURRENT_STREAMS. ``conn`` is closed on return.
    Never raises except CancelledError.
    """
    server = _Server(conn, dst, pool, counters or HttpCounters(), idle_timeout, note_error,
                     max_streams)
    server.counters.connections += 1
    clean = False
    try:
        await server.run()
        clean = not server.broken
    except Exception as exc:  # noqa: BLE001 - a bug must cost one connection, not the daemon's log
        first = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
        server.note(f"HTTP/2 relay failed ({type(first).__name__} at {where(first)}: {first}); "
                    "the connection was closed", f"h2 relay failed ({failure_kind(first)})")
    finally:
        await server.close(clean)


class _AppStream:
    """One application stream: its task, its wake-ups, and its request body as the async
    iterator the pool pulls (each piece acknowledged to the application as it is pulled)."""

    __slots__ = ("body_wanted", "chunks", "ended", "expects_continue", "method", "readable", "server", "sid",
                 "task", "upstream_wait", "writable")

    def __init__(self, server: _Server, event: RequestStarted) -> None:
        self.server = server
        self.sid = event.stream_id
        self.method = event.method
        self.chunks: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.ended = event.end_stream  # the application sent END_STREAM
        self.expects_continue = event.expects_continue  # a 100 is due when the pool first pulls
        self.readable = asyncio.Event()  # body data or its end arrived
        self.writable = asyncio.Event()  # a window opened, or the connection broke
        self.task: asyncio.Task | None = None
        self.body_wanted = not self.ended  # False: body data is acknowledged and dropped at once
        self.upstream_wait = False  # waiting on the pool: the connection is not idle

    def __aiter__(self) -> _AppStream:
        """The request body: one pass only."""
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body; StopAsyncIteration after END_STREAM."""
        server = self.server
        if self.expects_continue:
            self.expects_continue = False
            server.core.send_continue(self.sid)
            server.kick()
        while not self.chunks:
            if self.ended:
                raise StopAsyncIteration
            self.readable.clear()
            upstream_wait, self.upstream_wait = self.upstream_wait, False  # it waits on the app now
            try:
                await self.readable.wait()
            finally:
                self.upstream_wait = upstream_wait
        data, flow = self.chunks.popleft()
        server.core.acknowledge(self.sid, flow)
        server.kick()
        server.counters.bytes_up += len(data)
        return data


class _Server:
    """One application connection: the core, the streams, the reader and the writer."""

    def __init__(self, conn, dst, pool, counters, idle_timeout, note_error, max_streams):
        self.conn = conn
        self.pool = pool
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.note_error = note_error
        self.core = H2ServerCore(dst, max_streams=max_streams)
        self.streams: dict[int, _AppStream] = {}
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.wake = asyncio.Event()  # the writer has something to send
        self.flushed = asyncio.Event()  # everything queued so far went out
        self.flushed.set()
        self.broken = False  # writing to the application failed
        self.tg: asyncio.TaskGroup | None = None
        self.reader: asyncio.Task | None = None

    # ---- the connection ----
    async def run(self) -> None:
        """Reader and writer until one ends, then our GOAWAY and a bounded drain."""
        self.core.start()
        self.kick()
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            writer = tg.create_task(self.write_loop())
            self.reader = reader = tg.create_task(self.read_loop())
            await asyncio.wait([reader, writer], return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            if not self.broken and not writer.done():
                self.core.goaway()  # nothing if a protocol error already queued one
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await self.flush()
                except (TimeoutError, _Gone):
                    self.broken = True
            writer.cancel()

    async def read_loop(self) -> None:
        """Application bytes into the core until EOF, a protocol error, idleness or the end
        of a GOAWAY'd connection's last stream (a stream task cancels us then)."""
        core, loop = self.core, self.loop
        while not (core.goaway_received and not self.streams):
            remaining = self.last_activity + self.idle_timeout - loop.time()
            if remaining <= 0:
                if not any(s.upstream_wait for s in self.streams.values()):
                    return  # idle: our GOAWAY follows
                self.last_activity = loop.time()
                continue
            try:
                async with asyncio.timeout(remaining):
                    data = await self.conn.recv(RECV_SIZE)
            except TimeoutError:
                continue
            except (OSError, EOFError):
                return
            if not data:
                return
            self.last_activity = loop.time()
            try:
                events = core.receive_data(data)
            except AppProtocolError as exc:
                self.counters.bad_requests += 1
                self.note(str(exc), "h2: the application broke HTTP/2")
                self.kick()  # the GOAWAY h2 queued
                return
            for event in events:
                self.dispatch(event)
            self.kick()

    def dispatch(self, event) -> None:
        """Act on one core event (synchronously: tasks and wake-ups only)."""
        core = self.core
        if isinstance(event, BodyReceived):
            s = self.streams.get(event.stream_id)
            if s is None or not s.body_wanted or not event.data:
                core.acknowledge(event.stream_id, event.flow_length)
            else:
                s.chunks.append((event.data, event.flow_length))
                s.readable.set()
        elif isinstance(event, WindowOpened):
            if event.stream_id == 0:
                for s in self.streams.values():
                    s.writable.set()
            elif (s := self.streams.get(event.stream_id)) is not None:
                s.writable.set()
        elif isinstance(event, RequestStarted):
            if core.closed:
                core.reset(event.stream_id, ErrorCodes.REFUSED_STREAM)
                return
            self.counters.requests += 1
            s = self.streams[event.stream_id] = _AppStream(self, event)
            s.task = self.tg.create_task(self.serve_stream(s, event))
        elif isinstance(event, BodyEnded):
            if (s := self.streams.get(event.stream_id)) is not None:
                s.ended = True
                s.readable.set()
        elif isinstance(event, StreamCancelled):
            if (s := self.streams.get(event.stream_id)) is not None and s.task is not None:
                s.task.cancel()  # its finally closes the pool's response
        elif isinstance(event, PeerGoaway):
            pass  # read_loop ends once the open streams are done

    async def write_loop(self) -> None:
        """Send what the core queued, whenever it queued something; ends when sending fails."""
        core = self.core
        while True:
            data = core.data_to_send()
            if not data:
                self.flushed.set()
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self.conn.sendall(data)
            except Exception:  # noqa: BLE001 - whatever the transport raises, the app is gone
                self.broken = True
                self.flushed.set()
                for s in self.streams.values():
                    s.writable.set()
                return

    def kick(self) -> None:
        """Wake the writer: the core queued frames."""
        self.flushed.clear()
        self.wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far was written. Raises _Gone if it cannot be."""
        self.kick()
        await self.flushed.wait()
        if self.broken:
            raise _Gone

    async def close(self, clean: bool) -> None:
        """Close the application's connection (bounded); abort it after a failure."""
        try:
            if clean:  # graceful: unread bytes from the app must not RST our GOAWAY away
                async with asyncio.timeout(CLOSE_TIMEOUT + 1.0):
                    return await self.conn.aclose("graceful")
        except Exception:  # noqa: BLE001, S110 - closing cleanly failed: abort instead
            pass
        with contextlib.suppress(Exception):
            if inspect.isawaitable(result := self.conn.abort()):
                await result

    def note(self, message: str, kind: str) -> None:
        """One line to the log and status."""
        if self.note_error is not None:
            self.note_error(message, kind)

    # ---- one stream ----
    async def serve_stream(self, s: _AppStream, event: RequestStarted) -> None:
        """Relay one request and its response; never raises but CancelledError."""
        core = self.core
        try:
            if event.rejected is not None:
                self.counters.bad_requests += 1
                reply = event.rejected.reply
                self.note(reply.body.decode().strip(), event.rejected.kind)
                await self.reply(s, reply)
                return
            body = None if event.end_stream else s
            s.upstream_wait = True
            try:
                response = await self.pool.request(event.head, body)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reply
                if isinstance(exc, LocalProtocolError):  # the pool cannot write what the app sent
                    self.counters.bad_requests += 1
                    await self.reply(s, bad_request_reply(str(exc)))
                    return
                self.upstream_failed(exc)
                await self.reply(s, error_reply(exc))
                return
            finally:
                s.upstream_wait = False
            try:
                await self.send_response(s, response)
            finally:
                with contextlib.suppress(Exception):  # the response is over either way
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await response.aclose()
        except _Gone:
            pass
        except Exception as exc:  # noqa: BLE001 - a bug costs this stream only
            self.counters.aborted += 1
            core.reset(s.sid, ErrorCodes.INTERNAL_ERROR)
            self.note(f"HTTP/2 stream relay failed ({type(exc).__name__} at {where(exc)}: {exc}); "
                      "the stream was reset", f"h2 stream relay failed ({failure_kind(exc)})")
        finally:
            self.streams.pop(s.sid, None)
            s.body_wanted = False
            while s.chunks:
                core.acknowledge(s.sid, s.chunks.popleft()[1])
            if core.is_open(s.sid):
                # Response complete but the body still coming: stop it, no error (RFC 9113
                # §8.1). Cut short (shutdown): CANCEL.
                core.reset(s.sid, ErrorCodes.NO_ERROR if core.has_sent_end(s.sid) else ErrorCodes.CANCEL)
            self.kick()
            if core.goaway_received and not self.streams and self.reader is not None:
                self.reader.cancel()  # the application's GOAWAY, and its last stream is done

    async def send_response(self, s: _AppStream, response: ResponseStream) -> None:
        """The pool's response head and body on the stream, within the windows."""
        head = response.head
        try:
            fields = response_fields(head, s.method)
            with_body = has_body(s.method, head.status)
            self.core.send_head(s.sid, fields, end_stream=not with_body)
        except ValueError as exc:
            error = RemoteProtocolError(f"response head cannot be relayed: {exc}")
            self.upstream_failed(error)
            await self.reply(s, error_reply(error))
            return
        self.kick()
        if not with_body:
            with contextlib.suppress(Exception):  # else the pool closes that connection
                await response.read(1)  # b"": the body is complete, so the pool reuses its connection
            await self.flush()
            return
        sent = 0
        while True:
            window = await self.wait_window(s)
            s.upstream_wait = True
            try:
                chunk = await response.read(min(window, READ_SIZE))
            except Exception as exc:  # noqa: BLE001 - mid-body: all we can do is reset the stream
                self.upstream_failed(exc)
                self.counters.aborted += 1
                self.core.reset(s.sid, ErrorCodes.INTERNAL_ERROR)
                return
            finally:
                s.upstream_wait = False
            if not chunk:
                if head.body_length is not None and sent != head.body_length:  # never END a short body
                    self.upstream_failed(RemoteProtocolError(
                        f"the response body ended after {sent} of {head.body_length} bytes"))
                    self.counters.aborted += 1
                    self.core.reset(s.sid, ErrorCodes.INTERNAL_ERROR)
                else:
                    self.core.end_stream(s.sid)
                await self.flush()
                return
            sent += len(chunk)
            self.counters.bytes_down += len(chunk)
            await self.send_chunk(s, chunk)

    async def send_chunk(self, s: _AppStream, data: bytes) -> None:
        """DATA frames for all of ``data``, waiting for windows and for the writer."""
        view = memoryview(data)
        while True:
            sent = self.core.send_data(s.sid, view)
            if sent:
                view = view[sent:]
                self.last_activity = self.loop.time()
            await self.flush()
            if not view:
                return
            await self.wait_window(s)

    async def wait_window(self, s: _AppStream) -> int:
        """The stream's send window once it is open. Raises _Gone if the stream closed."""
        core = self.core
        while True:
            if self.broken or not core.can_send(s.sid):
                raise _Gone
            window = core.window(s.sid)
            if window > 0:
                return window
            s.writable.clear()
            await s.writable.wait()

    async def reply(self, s: _AppStream, reply: ErrorReply) -> None:
        """One of Atlantic's own plain-text replies on the stream (if it can still carry one)."""
        if not self.core.can_send(s.sid):
            return
        with_body = s.method != "HEAD"
        try:
            self.core.send_head(s.sid, error_fields(reply), end_stream=not with_body)
        except ValueError:  # a response already started: only a reset tells the app
            self.core.reset(s.sid, ErrorCodes.INTERNAL_ERROR)
            self.counters.aborted += 1
            return
        if with_body:
            await self.send_chunk(s, reply.body)
            self.core.end_stream(s.sid)
        await self.flush()

    def upstream_failed(self, exc: BaseException) -> None:
        """Count a failure on the pool side and pass its one-line reason on (a bug names its
        type and where it was raised)."""
        self.counters.upstream_errors += 1
        message = error_reply(exc).body.decode().strip()
        if not isinstance(exc, (UpstreamError, OSError)):
            message = f"{message} [{type(exc).__name__} at {where(exc)}: {exc}]"
        self.note(message, f"request relay: {failure_kind(exc)}")

