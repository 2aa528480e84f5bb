"""The HTTP/1.x request relay: the application talks to us as if we were the origin.

Thin async adapter around h11 (server side) and the shared pool: each request the
application sends becomes one ``pool.request()``; the response streams back with
framing chosen by h11. An application that opens a new connection per request still
rides the pool's warm upstream connections.

- One request at a time: the next pipelined request is read only after the response
  went out (bytes already read stay buffered inside h11).
- The application's connection is an :class:`~.appconn.AppConn`: a plain socket, or
  TLS that :mod:`.tlsterm` terminated (then ``origin`` names the https origin).
- Backpressure: one body buffer in flight per direction; the response is pulled from
  the pool only as fast as ``sendall`` drains it to the application. A large
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

import h11

from atlantic.pool.errors import RemoteProtocolError, UpstreamError
from atlantic.forwarder.appconn import AppConn, SocketConn
from atlantic.forwarder.http1_body import RequestBody, body_length, framing_problem, has_both_lengths
from atlantic.forwarder.http1_heads import (
    BadRequest,
    ErrorReply,
    bad_request_reply,
    error_reply,
    failure_kind,
    where,
    is_tunnel_request,
    request_head,
    response_headers,
    for_name,
    split_host,
)
from atlantic.forwarder.stream_relay import relay_stream
from atlantic.pool.api import ByteStream, Endpoint, Pool, ResponseStream, SplicingResponseStream
from atlantic.pool.errors import LocalProtocolError

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


class _SplicedBody:
    """A body h11 frames but never sees (its ``sendfile`` pattern): only its length."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


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
    """One application connection: an h11 server connection and its AppConn."""

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
        self.method = ""  # of the request being answered ("" before its head)
        self.to_destination = False
        self.address: str | None = None
        self.origin: Endpoint | None = None
        self.loop = asyncio.get_running_loop()
        self.conn = h11.Connection(h11.SERVER)
        self.raw: list[bytes] | None = []  # bytes of the current request until its head parsed
        self.body: RequestBody | None = None

    async def run(self, first_bytes: bytes) -> str:
        """Serve requests; returns how to close: "graceful", "close" or "reset"."""
        conn = self.conn
        if first_bytes:
            self.feed(first_bytes)
        while True:
            try:
                event = await self.next_event()
            except h11.RemoteProtocolError as exc:
                return await self.reply_bad_request(exc)
            except _HeadTimeout:
                return await self.reply_head_timeout()
            if not isinstance(event, h11.Request):
                return "close"  # ConnectionClosed (or PAUSED, which we never ask for)
            raw, self.raw = self.raw, None
            keep_going = await self.handle(event, raw)
            if not keep_going:
                return "graceful"
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return "graceful"
            pending = conn.trailing_data[0]
            self.raw = [pending] if pending else []
            self.method = ""
            conn.start_next_cycle()

    def feed(self, data: bytes) -> None:
        """Hand received bytes to h11 (b"" is EOF); keep them while a request head is read."""
        if self.raw is not None and data:
            self.raw.append(data)
        self.conn.receive_data(data)

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
        if self.head_deadline is None and self.raw:  # part of a head is here already
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

    async def next_event(self):
        """The next h11 event (a request head, or the end), reading from the socket as needed."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                self.head_deadline = None
                return event
            self.feed(await self.recv_head())

    async def handle(self, request: h11.Request, raw: list[bytes]) -> bool:
        """Relay one request; False once the connection must close."""
        counters = self.counters
        counters.requests += 1
        method = self.method = request.method.decode("ascii")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()]
        if is_tunnel_request(method, headers):
            return await self.tunnel(method, headers, b"".join(raw))
        problem = framing_problem(request)
        if problem is not None:
            counters.bad_requests += 1
            await self.reply(bad_request_reply(problem))
            return False
        if has_both_lengths(request):
            # RFC 9112 §6.1: Transfer-Encoding wins; the Content-Length must not travel on
            # (request smuggling), and this connection closes after the response.
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            self.must_close = True
        length = body_length(request)
        try:
            head = request_head(method, request.target.decode("latin-1"), headers, self.dst, length)
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
            self.conn.next_event()  # the EndOfMessage h11 already holds: no I/O
        else:
            body = RequestBody(self)
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
        """Stream the response head and body to the application (h11 frames it)."""
        conn = self.conn
        rh = stream.head
        try:
            if not 200 <= rh.status <= 999:
                raise h11.LocalProtocolError(f"unexpected status {rh.status}")
            headers = response_headers(rh, method)
            if self.must_close:
                headers.append(("Connection", "close"))  # h11 then closes after the body
            data = conn.send(
                h11.Response(
                    status_code=rh.status,
                    headers=headers,
                    reason=rh.reason.encode("latin-1", "replace"),
                )
            )
        except (h11.LocalProtocolError, ValueError) as exc:
            exc = RemoteProtocolError(f"response head cannot be relayed: {exc}")
            self.upstream_failed(exc)
            await self.reply(error_reply(exc))
            return
        await self.sendall(data)
        if method == "HEAD" or rh.status in _NO_BODY_STATUS:
            try:
                await stream.read(1)  # b"": marks the body complete, so the pool reuses its connection
            except Exception:  # noqa: BLE001 - the app has its response; the pool closes that connection
                pass
        elif self.app.socket is not None and isinstance(stream, SplicingResponseStream) and stream.can_splice_body():
            await self.splice_body(stream)
        else:
            await self.copy_body(stream)
        try:
            data = conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # fewer bytes than Content-Length said
            self.upstream_failed(exc)
            raise _Abort from exc
        if data:
            await self.sendall(data)

    async def copy_body(self, stream: ResponseStream) -> None:
        """The body through Python, piece by piece, framed by h11."""
        conn, counters = self.conn, self.counters
        while True:
            try:
                chunk = await stream.read(READ_SIZE)
            except Exception as exc:  # noqa: BLE001 - mid-body: all we can do is reset
                self.upstream_failed(exc)
                raise _Abort from exc
            if not chunk:
                return
            try:
                pieces = conn.send_with_data_passthrough(h11.Data(data=chunk))
            except h11.LocalProtocolError as exc:  # more bytes than Content-Length said
                self.upstream_failed(exc)
                raise _Abort from exc
            counters.bytes_down += len(chunk)
            await self.sendall(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    async def splice_body(self, stream: SplicingResponseStream) -> None:
        """The body socket to socket (``os.splice``): h11 frames a stand-in it never reads."""
        body = _SplicedBody(stream.head.body_length)
        for piece in self.conn.send_with_data_passthrough(h11.Data(data=body)):
            if piece is not body:
                await self.sendall(piece)
                continue
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
        """Send one of our own responses if h11 still lets us start one."""
        conn = self.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Abort  # a response is already under way: only a reset tells the app
        try:
            data = conn.send(h11.Response(status_code=reply.status, headers=reply.headers(), reason=reply.reason.encode()))
            if self.method != "HEAD":  # a response to HEAD has no body; its Content-Length still says how long
                data += conn.send(h11.Data(data=reply.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise _Abort from exc
        await self.sendall(data)

    async def reply_bad_request(self, exc: h11.RemoteProtocolError) -> str:
        """400 (or h11's hint) for a malformed request, then close."""
        self.counters.bad_requests += 1
        await self.reply(bad_request_reply(str(exc), exc.error_status_hint))
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
        if not isinstance(exc, (UpstreamError, OSError, h11.LocalProtocolError)):
            message = f"{message} [{type(exc).__name__} at {where(exc)}: {exc}]"
        self.note_error(message, f"request relay: {failure_kind(exc)}")

    async def close(self, mode: str) -> None:
        """Close the application's connection: lingering (graceful), plain, or with an RST."""
        if self.body is not None:
            self.body.abandon_if_running()
        await self.app.aclose(mode)
