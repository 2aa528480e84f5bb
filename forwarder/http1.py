"""The HTTP/1.x request relay: the application talks to us as if we were the origin.

Thin async adapter around :mod:`atlantic.pool.h1wire` (request heads parsed, response
heads written as bytes, bodies framed; no h11) and the shared pool: each request the
application sends becomes one ``pool.request()``; the response streams back framed as
h11 would frame it (Content-Length, else chunked, else until close for HTTP/1.0). An
application that opens a new connection per request still rides the pool's warm
upstream connections.

- One request at a time: the next pipelined request is read only after the response
  went out (bytes already read stay buffered in the reader).
- The application's connection is an :class:`~.appconn.AppConn`: a plain socket, or
  TLS that :mod:`.tlsterm` terminated (then ``origin`` names the https origin).
- Backpressure: one body buffer in flight per direction; the response is pulled from
  the pool only as fast as ``sendall`` drains it to the application (body bytes the
  pool already holds go out with the head: one write for a small response). A large
  Content-Length body on a plain upstream connection is spliced socket to socket
  instead (one pipe in flight), never entering Python; only into a plain socket.
- ``Expect: 100-continue`` is answered by us when the pool first pulls the body: the
  pool interface carries no interim responses, so waiting for the upstream's 100 would
  stall the application until its own timeout (curl: 1 s). The header is not forwarded.
- CONNECT and ``Upgrade`` requests turn the flow into a tunnel: ``pool.open_tunnel()``
  to the origin and the request bytes replayed exactly as the application sent them.
- Failures before the response head become a one-line plain-text error response
  (502/504, or 400 for a malformed request), then the connection closes. A failure
  mid-body resets the application's connection, so a truncated body never looks whole.
- Hostile input: a request head must be complete within ``head_timeout`` of its first
  byte (else 408, slowloris); Transfer-Encoding with Content-Length is relayed chunked
  without the Content-Length, and the connection closes after the response (RFC 9112
  §6.1); a Host no upstream can carry (not ASCII) is a 400 before the pool sees it.
  Failures reach ``note_error`` as one line with a kind, never as a traceback.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from atlantic.forwarder.appconn import AppConn, SocketConn
from atlantic.forwarder.http1_body import RequestBody, framing_problem
from atlantic.forwarder.http1_heads import (BadRequest, ErrorReply, bad_request_reply, error_reply, failure_kind,
                                            for_name, is_tunnel_request, request_head, response_bytes,
                                            response_headers, split_host, where)
from atlantic.forwarder.stream_relay import relay_stream
from atlantic.pool.api import ByteStream, Endpoint, Pool, ResponseStream, SplicingResponseStream
from atlantic.pool.errors import LocalProtocolError, RemoteProtocolError, UpstreamError
from atlantic.pool.h1wire import MAX_REQUEST_HEAD, MessageReader, Request, WireError
from atlantic.pool.h1write import head_bytes, status_line

__all__ = ["HEAD_TIMEOUT_S", "HttpCounters", "NoteError", "serve_http"]

RECV_SIZE = 65536
READ_SIZE = 262144  # one response buffer; the socket's send buffer holds the rest
HEAD_TIMEOUT_S = 30.0  # a whole request head, from its first byte (nginx: client_header_timeout 60 s)
_NO_BODY_STATUS = (204, 304)

# note_error(message, kind): one line for logs and status; ``kind`` (default: the message)
# is what is counted and rate-limited, so a message that names a destination is no new kind.
NoteError = Callable[..., None]


@dataclass(slots=True)
class HttpCounters:
    """Counters of the request relay, shared by every flow (mutable, no lock: one loop)."""

    connections: int = 0
    requests: int = 0
    bad_requests: int = 0
    head_timeouts: int = 0  # request heads not complete within head_timeout: 408
    upstream_errors: int = 0
    aborted: int = 0  # failures mid-body: the application's connection was reset
    tunnels: int = 0  # CONNECT / Upgrade requests turned into tunnels
    bytes_up: int = 0
    bytes_down: int = 0


class _Abort(Exception):
    """The flow cannot continue: reset the application's connection."""


class _HeadTimeout(Exception):
    """A request head was not complete within the head timeout (or idled half-way)."""


async def serve_http(
    conn: AppConn | socket.socket,
    first_bytes: bytes,
    dst: tuple[str, int],
    pool: Pool,
    *,
    counters: HttpCounters | None = None,
    idle_timeout: float = 120.0,
    note_error: NoteError | None = None,
    to_destination: bool = False,
    address: str | None = None,
    head_timeout: float = HEAD_TIMEOUT_S,
    origin: Endpoint | None = None,
    open_tunnel: Callable[[str, int], Awaitable[ByteStream]] | None = None,
) -> None:
    """Serve HTTP/1.x requests on the application's connection until it closes.

    ``conn`` is the application's connection: an accepted, non-blocking socket or an
    :class:`~.appconn.AppConn` (closed on return); ``first_bytes``
    what sniffing already read; ``dst`` the original destination (host, port);
    ``note_error(message, kind)`` receives one line per failure (for logging and status);
    ``head_timeout``: seconds for a whole request head from its first byte (then 408);
    ``to_destination``: connect to ``dst`` rather than the Host name (``direct``: the
    application already resolved the name, and the daemon must not resolve it again);
    ``address``: the fake address the application connected to when ``dst`` holds the
    name behind it: a request addressed to that literal goes to the name instead;
    ``origin``: every request goes there (TLS we terminated: ``https``, the SNI name), and
    ``open_tunnel(host, port)`` (default ``pool.open_tunnel``) opens the tunnels of CONNECT
    and Upgrade requests (for TLS we terminated: TLS to the origin inside a tunnel).
    Never raises except CancelledError.
    """
    if isinstance(conn, socket.socket):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the head must not wait for Nagle
        except OSError:
            pass
        conn = SocketConn(conn)
    flow = _Flow(conn, dst, pool, counters or HttpCounters(), idle_timeout, note_error, head_timeout)
    flow.to_destination = to_destination
    flow.address = address
    flow.origin = origin
    flow.open_tunnel = open_tunnel or pool.open_tunnel
    flow.counters.connections += 1
    mode = "reset"
    try:
        mode = await flow.run(first_bytes)
    except _Abort:
        flow.counters.aborted += 1
    except OSError:
        mode = "close"
    except Exception as exc:  # noqa: BLE001 - a bug must cost one flow, not the daemon's log
        flow.counters.aborted += 1
        if note_error is not None:
            note_error(f"request relay failed ({type(exc).__name__} at {where(exc)}: {exc}); "
                       "the connection was reset", f"request relay failed ({failure_kind(exc)})")
    finally:
        await flow.close(mode)


class _Flow:
    """One application connection: its request reader and its AppConn."""

    def __init__(self, app, dst, pool, counters, idle_timeout, note_error, head_timeout=HEAD_TIMEOUT_S):
        self.app = app
        self.dst = dst
        self.pool = pool
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.note_error = note_error
        self.head_timeout = head_timeout
        self.head_deadline: float | None = None  # loop time; set while a head is under way
        self.must_close = False  # close after this response (framing that cannot be trusted)
        self.keep_alive = True  # the connection may carry another request after this one
        self.method = ""  # of the request being answered ("" before its head)
        self.http_version = "1.1"  # of the request being answered
        self.responding = False  # a response head went out for the current request
        self.waiting_for_continue = False  # Expect: 100-continue not answered yet
        self.to_destination = False
        self.address: str | None = None
        self.origin: Endpoint | None = None
        self.loop = asyncio.get_running_loop()
        self.reader = MessageReader(MAX_REQUEST_HEAD)
        self.body: RequestBody | None = None

    async def run(self, first_bytes: bytes) -> str:
        """Serve requests; returns how to close: "graceful", "close" or "reset"."""
        reader = self.reader
        if first_bytes:
            reader.receive_data(first_bytes)
        while True:
            try:
                request, raw = await self.next_request()
            except WireError as exc:
                return await self.reply_bad_request(exc)
            except _HeadTimeout:
                return await self.reply_head_timeout()
            if request is None:
                return "close"  # the application closed between requests
            keep_going = await self.handle(request, raw)
            if not keep_going or not self.keep_alive or not reader.body_is_done():
                return "graceful"
            self.method = ""
            self.responding = self.waiting_for_continue = False

    async def recv(self) -> bytes:
        """The application's next bytes (b"" at EOF), bounded by the idle timeout."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await self.app.recv(RECV_SIZE)
        except (ConnectionError, TimeoutError):
            return b""

    async def recv_head(self) -> bytes:
        """Bytes of a request head: idle timeout before its first byte, then the head
        deadline (slowloris). _HeadTimeout once a started head runs out of time."""
        loop = self.loop
        if self.head_deadline is None and self.reader.pending():  # part of a head is here already
            self.head_deadline = loop.time() + self.head_timeout
        deadline = self.head_deadline
        timeout = self.idle_timeout if deadline is None else min(self.idle_timeout, deadline - loop.time())
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                data = await self.app.recv(RECV_SIZE)
        except ConnectionError:
            return b""
        except TimeoutError:
            if deadline is not None:
                raise _HeadTimeout from None
            return b""  # idle between requests: close quietly
        if data and self.head_deadline is None:
            self.head_deadline = loop.time() + self.head_timeout
        return data

    async def next_request(self) -> tuple[Request | None, bytes]:
        """The next request head and the bytes it came in (from its first byte on), reading
        as needed; (None, b"") once the application closed. Raises WireError."""
        reader = self.reader
        while True:
            raw = reader.buffered()
            request = reader.next_request()
            if request is not None:
                self.head_deadline = None
                return request, raw
            if reader.is_closed:
                return None, b""
            reader.receive_data(await self.recv_head())

    async def handle(self, request: Request, raw: bytes) -> bool:
        """Relay one request; False once the connection must close."""
        counters = self.counters
        counters.requests += 1
        method = self.method = request.method
        self.http_version = request.http_version
        self.keep_alive = request.keep_alive
        headers = request.headers
        if is_tunnel_request(method, headers):
            return await self.tunnel(method, headers, raw)
        problem = framing_problem(request)
        if problem is not None:
            counters.bad_requests += 1
            await self.reply(bad_request_reply(problem))
            return False
        if request.has_both_lengths:
            # RFC 9112 §6.1: Transfer-Encoding wins; the Content-Length must not travel on
            # (request smuggling), and this connection closes after the response.
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            self.must_close = True
        length = request.body
        try:
            head = request_head(method, request.target, headers, self.dst, length)
            if self.origin is not None:
                head = replace(head, endpoint=self.origin)
            elif self.to_destination:
                head = replace(head, endpoint=Endpoint("http", *self.dst))
            elif self.address is not None and head.endpoint.host == self.address:
                head = for_name(head, self.dst[0])
        except BadRequest as exc:
            counters.bad_requests += 1
            await self.reply(bad_request_reply(str(exc)))
            return False
        if length == 0:
            body = None
        else:
            body = RequestBody(self)
            self.waiting_for_continue = request.expects_continue
        self.body = body
        try:
            stream = await self.pool.request(head, body)
        except _Abort:
            raise  # the application went away while we sent it 100 Continue
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response, never a traceback
            if body is not None and body.app_error is not None:
                await self.reply_bad_request(body.app_error)
                return False
            if isinstance(exc, LocalProtocolError):  # the pool cannot write what the app sent
                counters.bad_requests += 1
                await self.reply(bad_request_reply(str(exc)))
                return False
            self.upstream_failed(exc)
            await self.reply(error_reply(exc))
            return False
        finally:
            if body is not None:
                body.abandon_if_running()
        try:
            await self.send_response(stream, method)
        finally:
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - the response already went out (or the flow is reset)
                pass
        return True

    async def send_response(self, stream: ResponseStream, method: str) -> None:
        """Stream the response head and body to the application."""
        rh = stream.head
        try:
            data, writer, keep_alive = response_bytes(
                rh.status, rh.reason, response_headers(rh, method), method=method,
                http_version=self.http_version, keep_alive=self.keep_alive and not self.must_close)
        except (WireError, ValueError) as exc:
            exc = RemoteProtocolError(f"response head cannot be relayed: {exc}")
            self.upstream_failed(exc)
            await self.reply(error_reply(exc))
            return
        self.responding = True
        self.keep_alive = keep_alive
        self.waiting_for_continue = False
        can_splice = getattr(stream, "can_splice_body", None)  # a Protocol isinstance costs ~20 us
        if method == "HEAD" or rh.status in _NO_BODY_STATUS:
            await self.sendall(data)
            data = b""
            try:
                await stream.read(1)  # b"": marks the body complete, so the pool reuses its connection
            except Exception:  # noqa: BLE001 - the app has its response; the pool closes that connection
                pass
        elif (self.app.socket is not None and can_splice is not None and not writer.chunked
              and writer.length == rh.body_length and can_splice()):
            await self.sendall(data)
            data = b""
            await self.splice_body(stream)
            writer.sent = writer.length
        else:
            data = await self.copy_body(stream, writer, data)
        try:
            data += writer.end()
        except WireError as exc:  # fewer bytes than Content-Length said
            self.upstream_failed(exc)
            raise _Abort from exc
        if data:
            await self.sendall(data)

    async def copy_body(self, stream: ResponseStream, writer: BodyWriter, pending: bytes) -> bytes:
        """The body through Python, piece by piece, framed by ``writer``. Body bytes already
        received (``read_nowait``) go out in one write with ``pending`` (the head): one
        send for a small response. Returns what is still unsent, to go with the body's end."""
        counters = self.counters
        read_nowait = getattr(stream, "read_nowait", None)
        while True:
            chunk = read_nowait() if pending and read_nowait is not None else None
            if chunk is None:
                if pending:
                    await self.sendall(pending)
                    pending = b""
                try:
                    chunk = await stream.read(READ_SIZE)
                except Exception as exc:  # noqa: BLE001 - mid-body: all we can do is reset
                    self.upstream_failed(exc)
                    raise _Abort from exc
            if not chunk:
                return pending
            try:
                data = writer.data(chunk)
            except WireError as exc:  # more bytes than Content-Length said
                self.upstream_failed(exc)
                raise _Abort from exc
            counters.bytes_down += len(chunk)
            if pending:
                pending += data
            else:
                await self.sendall(data)

    async def splice_body(self, stream: SplicingResponseStream) -> None:
        """The body socket to socket (``os.splice``): a Content-Length body goes as it is."""
        try:
            await stream.splice_body_to(self.app.socket, self.counters)
        except OSError as exc:  # the application went away
            raise _Abort from exc
        except Exception as exc:  # noqa: BLE001 - mid-body: all we can do is reset
            self.upstream_failed(exc)
            raise _Abort from exc

    async def sendall(self, data: bytes) -> None:
        """Write to the application; it going away ends the flow."""
        try:
            await self.app.sendall(data)
        except OSError as exc:
            raise _Abort from exc

    async def tunnel(self, method: str, headers: list[tuple[str, str]], raw: bytes) -> bool:
        """Switch the flow to a byte tunnel to the origin; the request bytes go first."""
        host, port = self.dst
        if method != "CONNECT" and self.origin is None:
            host_value = next((v for n, v in headers if n.lower() == "host"), None)
            if host_value:
                try:
                    host = split_host(host_value)[0]
                except BadRequest as exc:
                    self.counters.bad_requests += 1
                    await self.reply(bad_request_reply(str(exc)))
                    return False
        try:
            stream = await self.open_tunnel(host, port)
        except Exception as exc:  # noqa: BLE001 - becomes the application's error response
            if isinstance(exc, LocalProtocolError):
                self.counters.bad_requests += 1
                await self.reply(bad_request_reply(str(exc)))
                return False
            self.upstream_failed(exc)
            await self.reply(error_reply(exc))
            return False
        self.counters.tunnels += 1
        result = await relay_stream(self.app.socket or self.app, stream, first_up=raw, idle_timeout=self.idle_timeout)
        self.counters.bytes_up += result.bytes_up
        self.counters.bytes_down += result.bytes_down
        if result.reason != "closed":
            raise _Abort  # an error or idle end: the application must not read it as a clean close
        return False

    async def reply(self, reply: ErrorReply) -> None:
        """Send one of our own responses (it closes the connection) unless one is under way."""
        if self.responding:
            raise _Abort  # a response is already under way: only a reset tells the app
        self.responding = True
        self.keep_alive = False
        data = head_bytes(status_line(reply.status, reply.reason), reply.headers())
        if self.method != "HEAD":  # a response to HEAD has no body; its Content-Length still says how long
            data += reply.body
        await self.sendall(data)

    async def reply_bad_request(self, exc: WireError) -> str:
        """400 (or the reader's hint: 431, 501) for a malformed request, then close."""
        self.counters.bad_requests += 1
        await self.reply(bad_request_reply(str(exc), exc.status))
        return "graceful"

    async def reply_head_timeout(self) -> str:
        """408 for a request head that did not complete in time, then close."""
        self.counters.head_timeouts += 1
        if self.note_error is not None:
            self.note_error(f"a request head was not complete within {self.head_timeout:g} s of its first "
                            "byte (slow or stalled client): answered 408 (daemon.head_timeout_s)",
                            "request head timeout")
        await self.reply(bad_request_reply(f"the request head was not complete within {self.head_timeout:g} s", 408))
        return "graceful"

    def upstream_failed(self, exc: BaseException) -> None:
        """Count a failure on the pool side and pass its one-line reason on, never a traceback
        (a bug names its type and where it was raised)."""
        self.counters.upstream_errors += 1
        if self.note_error is None:
            return
        message = error_reply(exc).body.decode().strip()
        if not isinstance(exc, (UpstreamError, OSError, WireError)):
            message = f"{message} [{type(exc).__name__} at {where(exc)}: {exc}]"
        self.note_error(message, f"request relay: {failure_kind(exc)}")

    async def close(self, mode: str) -> None:
        """Close the application's connection: lingering (graceful), plain, or with an RST."""
        if self.body is not None:
            self.body.abandon_if_running()
        await self.app.aclose(mode)
