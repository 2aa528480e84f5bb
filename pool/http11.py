"""HTTP/1.1 client connections with h11: requests out, streamed responses in.

Async adapter over a :class:`~atlantic.pool.transport.Transport`. One request at a
time; the response body is pulled from the socket only as the caller reads it. The
connection goes back to the pool (``on_release(reusable)``) once the body was read to
the end and both sides allow keep-alive; a partly read response closes it.

A large Content-Length body on a plain TCP connection can instead be spliced to the
application's socket (``splice_body_to``): the bytes never enter Python, and a fresh
h11 state machine takes the connection over for the next request.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Callable

import h11

from atlantic.pool.api import RequestHead, ResponseHead
from atlantic.pool.errors import LocalProtocolError, RemoteProtocolError, UpstreamError
from atlantic.pool.splice import ByteCounters, RelayEnd
from atlantic.pool.transport import Transport

__all__ = ["ConnectionLost", "H1Connection", "H1ResponseStream", "HOP_BY_HOP", "check_host",
           "check_request", "request_event", "response_head"]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "te", "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"})
_FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
MAX_HEAD = 64 * 1024
SPLICE_MIN = 256 * 1024  # below this a pipe and a dup cost about what copying does


# What HTTP lets through, checked before a request touches a connection: a host name is
# an RFC 3986 reg-name in ASCII (IDNs travel as xn--), a target visible ASCII, a field
# value Latin-1 text without control characters (HTAB allowed).
_HOST_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]{1,255}\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")


def _shown(text: str) -> str:
    """``text`` quoted for a one-line message: ASCII only, at most ~60 characters."""
    return ascii(text if len(text) <= 60 else text[:60] + "...")


def check_host(host: str, port: int = 80) -> None:
    """:class:`LocalProtocolError` unless ``host`` is an ASCII host name or an IP literal
    (an IPv6 one with or without brackets) and ``port`` is 1-65535: what a request line,
    Host and CONNECT carry."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        except ValueError:
            raise LocalProtocolError(f"host {_shown(host)} is neither a host name nor an IPv6 address") from None
    elif not _HOST_CHARS.match(host):
        raise LocalProtocolError(f"host {_shown(host)} is not an ASCII host name "
                                 "(international names travel in their xn-- form)")
    if not 0 < port < 65536:
        raise LocalProtocolError(f"port {port} of host {_shown(host)} is not 1-65535")


def check_request(head: RequestHead) -> None:
    """:class:`LocalProtocolError` (one line) if ``head`` cannot be written as HTTP/1.1 or
    HTTP/2: checked before any connection is used, so a bad request costs none."""
    if head.endpoint.scheme not in ("http", "https"):
        raise LocalProtocolError(f"scheme {_shown(head.endpoint.scheme)} is neither http nor https")
    check_host(head.endpoint.host, head.endpoint.port)
    if not _TOKEN.match(head.method):
        raise LocalProtocolError(f"method {_shown(head.method)} is not an HTTP token")
    if not _TARGET.match(head.target):
        raise LocalProtocolError(f"request target {_shown(head.target)} has bytes HTTP does not allow")
    for name, value in head.headers:
        if not _TOKEN.match(name):
            raise LocalProtocolError(f"header name {_shown(name)} is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise LocalProtocolError(f"header {_shown(name)} has a control character or text "
                                     f"beyond Latin-1: {_shown(value)}")


class ConnectionLost(UpstreamError):
    """The connection closed under a request. ``retryable``: no response byte had arrived."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def response_head(status: int, reason: str, raw: list[tuple[str, str]], *, method: str,
                  http_version: str, chunked: bool | None = None) -> ResponseHead:
    """A :class:`ResponseHead` without hop-by-hop headers; ``body_length`` from the framing."""
    headers: list[tuple[str, str]] = []
    length: int | None = None
    is_chunked = False
    for name, value in raw:
        lname = name.lower()
        if lname == "content-length":
            length = int(value) if value.strip().isdigit() else None
        elif lname == "transfer-encoding":
            is_chunked = True
        if lname not in HOP_BY_HOP:
            headers.append((name, value))
    if chunked is not None:
        is_chunked = chunked
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body: int | None = 0
    elif is_chunked:
        body = None
    else:
        body = length
    return ResponseHead(status, reason, tuple(headers), body, http_version)


def request_headers(head: RequestHead, proxy_authorization: str | None) -> list[tuple[bytes, bytes]]:
    """Headers as sent on HTTP/1.1: Host first, framing from ``body_length``, proxy auth.

    Values are Latin-1 (each character one byte, as h11 parsed them from the application);
    raises UnicodeEncodeError otherwise (:func:`check_request` says so first, in one line).
    """
    out = [(b"Host", head.endpoint.authority.encode("ascii"))]
    for name, value in head.headers:
        lname = name.lower()
        if lname in _FRAMING or lname in HOP_BY_HOP:
            continue
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    if head.body_length is None:
        out.append((b"Transfer-Encoding", b"chunked"))
    elif head.body_length or head.method in ("POST", "PUT", "PATCH"):
        out.append((b"Content-Length", str(head.body_length).encode()))
    if proxy_authorization is not None:
        out.append((b"Proxy-Authorization", proxy_authorization.encode("latin-1")))
    return out


def request_event(head: RequestHead, proxy_authorization: str | None, *, absolute_form: bool) -> h11.Request:
    """The h11 request for ``head``: absolute-form (to a proxy) or origin-form.

    Raises :class:`LocalProtocolError`, one line, if it cannot be written as HTTP/1.1.
    """
    target = head.target
    if absolute_form:
        # OPTIONS * travels to a proxy as the bare authority (RFC 9112 §3.2.4)
        target = f"http://{head.endpoint.authority}" + ("" if target == "*" else target)
    try:
        return h11.Request(method=head.method.encode("ascii"), target=target.encode("ascii"),
                           headers=request_headers(head, proxy_authorization))
    except (h11.LocalProtocolError, UnicodeError) as e:
        reason = f"{type(e).__name__}: {e}" if isinstance(e, UnicodeError) else str(e)
        raise LocalProtocolError(f"cannot write {_shown(head.method)} {_shown(target)} as HTTP/1.1 "
                                 f"({' '.join(reason.split())[:120]})") from None


class H1Connection:
    """One HTTP/1.1 connection (to a proxy, absolute-form, or to the origin for direct)."""

    __slots__ = ("transport", "h11", "absolute_form", "used", "name")

    def __init__(self, transport: Transport, *, absolute_form: bool, name: str) -> None:
        self.transport = transport
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.absolute_form = absolute_form
        self.used = False
        self.name = name  # redacted, for error messages

    def is_peer_closed(self) -> bool:
        """True if this idle connection cannot be reused (peer closed or sent junk)."""
        return self.transport.is_peer_closed()

    async def aclose(self) -> None:
        """Close the connection (bounded: half a second for the peer to take the FIN)."""
        await self.transport.aclose(0.5)

    async def send(self, head: RequestHead, body: AsyncIterator[bytes] | None,
                   proxy_authorization: str | None) -> ResponseHead:
        """Send the request and its body; return the response head (1xx skipped).

        Raises :class:`ConnectionLost` (``retryable`` when nothing came back),
        :class:`RemoteProtocolError`, or :class:`LocalProtocolError` before anything is
        written when ``head`` cannot be written as HTTP/1.1.
        """
        request = request_event(head, proxy_authorization, absolute_form=self.absolute_form)
        w = self.transport
        self.used = True
        try:
            w.write(self.h11.send(request))
            if body is not None:
                async for chunk in body:
                    if chunk:
                        w.write(self.h11.send(h11.Data(data=chunk)))
                        await w.drain()
            w.write(self.h11.send(h11.EndOfMessage()))
            await w.drain()
        except (ConnectionError, OSError) as e:
            # a write fails on a connection the peer closed; nothing of a response came back
            raise ConnectionLost(f"{self.name}: connection closed while sending ({e})",
                                 retryable=True) from None
        except h11.LocalProtocolError as e:  # the body broke its own framing: the caller's fault
            raise LocalProtocolError(f"cannot send the request body to {self.name}: {e}") from None
        got_bytes = False
        while True:
            event, got = await self.next_event()
            got_bytes = got_bytes or got
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return response_head(
                    event.status_code, event.reason.decode("latin-1"),
                    [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()],
                    method=head.method, http_version=event.http_version.decode())
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost(f"{self.name}: connection closed before the response",
                                     retryable=not got_bytes)
            raise RemoteProtocolError(f"{self.name}: unexpected {type(event).__name__}")

    async def next_event(self, read_size: int = 65536) -> tuple[object, bool]:
        """The next h11 event, reading as needed; and whether any byte arrived meanwhile.

        EOF while a response is due becomes ``h11.ConnectionClosed`` (h11 would call it a
        protocol error); raises :class:`RemoteProtocolError` for broken HTTP.
        """
        got = False
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise RemoteProtocolError(f"{self.name} broke HTTP/1.1: {e}") from None
            if event is not h11.NEED_DATA:
                return event, got
            try:
                data = await self.transport.read(read_size)
            except (ConnectionError, OSError):
                data = b""
            if not data and self.h11.their_state is h11.SEND_RESPONSE:
                return h11.ConnectionClosed(), got  # h11 would call this a protocol error
            got = got or bool(data)
            self.h11.receive_data(data)

    def can_reuse(self) -> bool:
        """After a complete exchange: may the next request go here? (starts the next cycle)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return not self.transport.is_closing()
        return False

    def restart_after_splice(self) -> bool:
        """After a body went around h11 (spliced): make the connection ready for the next
        request, if it may carry one; True if so.

        h11 still waits for that body, so a fresh h11 connection takes over. Our state
        is DONE unless either side's head disabled keep-alive (then MUST_CLOSE).
        """
        if self.h11.our_state is h11.DONE and not self.transport.is_closing():
            self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            return True
        return False


class H1ResponseStream:
    """A response on an HTTP/1.1 connection; ``read()`` pulls body bytes from the socket."""

    __slots__ = ("head", "_conn", "_on_release", "_done", "_released", "_started")

    def __init__(self, head: ResponseHead, conn: H1Connection,
                 on_release: Callable[[bool], None]) -> None:
        self.head = head
        self._conn = conn
        self._on_release = on_release
        self._done = False
        self._released = False
        self._started = False  # a body byte was read: too late to splice

    async def read(self, max_bytes: int = 262144) -> bytes:
        """The next piece of the body; ``b""`` once complete (the connection is then released)."""
        if self._done:
            return b""
        self._started = True
        try:
            event, _ = await self._conn.next_event(max(max_bytes, 16384))
        except BaseException:
            self._release(False)
            raise
        if isinstance(event, h11.Data):
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if isinstance(event, h11.EndOfMessage):
            self._done = True
            self._release(self._conn.can_reuse())
            return b""
        self._release(False)
        if isinstance(event, h11.ConnectionClosed):
            raise RemoteProtocolError(f"{self._conn.name} closed the connection mid-body")
        raise RemoteProtocolError(f"{self._conn.name}: unexpected {type(event).__name__} in body")

    def can_splice_body(self) -> bool:
        """True if ``splice_body_to`` can carry this body: a large Content-Length body,
        not read from yet, on a plain TCP connection (TLS bytes must pass through Python)."""
        return (not (self._started or self._released) and (self.head.body_length or 0) >= SPLICE_MIN
                and self._conn.transport.is_plain_tcp())

    async def splice_body_to(self, sock: socket.socket, counters: ByteCounters | None = None) -> None:
        """Move the whole body to ``sock`` with ``os.splice``, then release the connection
        (reusable as after reading the body to the end). Only if ``can_splice_body()``.

        ``counters.bytes_down`` grows as bytes reach ``sock``. Raises RemoteProtocolError
        if the upstream fails or ends mid-body, ConnectionResetError if ``sock`` fails;
        either way the connection is closed, not reused.
        """
        conn, length = self._conn, self.head.body_length
        self._started = True
        held = conn.h11.trailing_data[0]  # body bytes h11 received with the head
        try:
            result = await conn.transport.splice_to(sock, length - min(len(held), length),
                                                    first=held[:length], counters=counters)
        except BaseException:
            self._release(False)
            raise
        if result.end is not RelayEnd.CLOSED:
            self._release(False)
            if result.end is RelayEnd.APP_RESET:
                raise ConnectionResetError(f"application socket: {result.error}")
            raise RemoteProtocolError(f"{conn.name} broke off mid-body ({result.error})")
        self._done = True
        # bytes past the body, unasked for: the connection's framing cannot be trusted
        self._release(len(held) <= length and conn.restart_after_splice())

    async def aclose(self) -> None:
        """Release: reused if the body was complete, else the connection is closed."""
        if not self._done and not self._released:
            # an empty body (HEAD, 204, Content-Length: 0) needs no read to be complete
            try:
                event = self._conn.h11.next_event()
            except h11.RemoteProtocolError:
                event = None
            if isinstance(event, h11.EndOfMessage):
                self._done = True
                self._release(self._conn.can_reuse())
        self._release(False)

    def _release(self, reusable: bool) -> None:
        if not self._released:
            self._released = True
            self._on_release(reusable)
