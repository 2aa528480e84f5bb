"""HTTP/1.1 client connections: requests out as bytes, streamed responses in.

Async adapter over a :class:`~atlantic.pool.transport.Transport`; the wire format is
:mod:`.h1wire`'s (heads written and parsed directly, no h11 on this path). One request
at a time; the response body is pulled from the socket only as the caller reads it.
The connection goes back to the pool (``on_release(reusable)``) once the body was read
to the end, both sides allow keep-alive and no unasked-for byte followed; a partly read
response closes it.

A large Content-Length body on a plain TCP connection can instead be spliced to the
application's socket (``splice_body_to``): the bytes never enter Python, and a fresh
reader takes the connection over for the next request.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Callable


from atlantic.pool.api import RequestHead, ResponseHead
from atlantic.pool.h1wire import MessageReader, WireError
from atlantic.pool.h1write import BodyWriter, head_bytes, request_line
from atlantic.pool.errors import LocalProtocolError, RemoteProtocolError, UpstreamError
from atlantic.pool.splice import ByteCounters, RelayEnd
from atlantic.pool.transport import Transport
from atlantic.pool.tunnel import read_connect_response

__all__ = ["ConnectionLost", "H1Connection", "H1ResponseStream", "HOP_BY_HOP", "check_host",
           "check_request", "request_bytes", "response_head"]

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


def request_bytes(head: RequestHead, proxy_authorization: str | None, *,
                  absolute_form: bool) -> tuple[bytes, BodyWriter]:
    """The request head as bytes, and the writer that frames its body.

    Raises :class:`LocalProtocolError`, one line, if it cannot be written as HTTP/1.1.
    """
    target = head.target
    if absolute_form:
        # OPTIONS * travels to a proxy as the bare authority (RFC 9112 §3.2.4)
        target = f"http://{head.endpoint.authority}" + ("" if target == "*" else target)
    try:
        data = head_bytes(request_line(head.method, target),
                          request_fields(head, proxy_authorization))
    except WireError as e:
        raise LocalProtocolError(f"cannot write {_shown(head.method)} {_shown(target)} as HTTP/1.1 "
                                 f"({' '.join(str(e).split())[:120]})") from None
    return data, BodyWriter(head.body_length, chunked=head.body_length is None)


def request_fields(head: RequestHead, proxy_authorization: str | None) -> list[tuple[str, str]]:
    """Headers as sent on HTTP/1.1: Host first, framing from ``body_length``, proxy auth.

    Values are Latin-1 text (one character per byte, as the application sent them);
    :func:`check_request` has said in one line if one is not.
    """
    out = [("Host", head.endpoint.authority)]
    for name, value in head.headers:
        lname = name.lower()
        if lname in _FRAMING or lname in HOP_BY_HOP:
            continue
        out.append((name, value))
    if head.body_length is None:
        out.append(("Transfer-Encoding", "chunked"))
    elif head.body_length or head.method in ("POST", "PUT", "PATCH"):
        out.append(("Content-Length", str(head.body_length)))
    if proxy_authorization is not None:
        out.append(("Proxy-Authorization", proxy_authorization))
    return out


class H1Connection:
    """One HTTP/1.1 connection (to a proxy, absolute-form, or to the origin for direct)."""

    __slots__ = ("transport", "reader", "absolute_form", "used", "name", "connect_answer", "_keep_alive", "_sent")

    def __init__(self, transport: Transport, *, absolute_form: bool, name: str,
                 connect_answer: tuple[str, str, float] | None = None) -> None:
        self.transport = transport
        self.reader = MessageReader(MAX_HEAD)
        self.absolute_form = absolute_form
        self.used = False
        self.name = name  # redacted, for error messages
        # (proxy, host:port, timeout) of a CONNECT written on this connection and not answered
        # yet: the first request goes right behind it, and its answer is read before the response
        self.connect_answer = connect_answer
        self._keep_alive = False  # the last response allows another request
        self._sent = False  # the last request went out whole

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
        data, framing = request_bytes(head, proxy_authorization, absolute_form=self.absolute_form)
        w = self.transport
        self.used = True
        self._sent = self._keep_alive = False
        try:
            if body is None:
                w.write(data + framing.end())
            else:
                w.write(data)
                async for chunk in body:
                    if chunk:
                        w.write(framing.data(chunk))
                        await w.drain()
                w.write(framing.end())
            await w.drain()
        except (ConnectionError, OSError) as e:
            # a write fails on a connection the peer closed; nothing of a response came back
            raise ConnectionLost(f"{self.name}: connection closed while sending ({e})",
                                 retryable=True) from None
        except WireError as e:  # the body broke its own framing: the caller's fault
            raise LocalProtocolError(f"cannot send the request body to {self.name}: {e}") from None
        self._sent = True
        if self.connect_answer is not None:
            await self._tunnel_answer()
        reader, method, got_bytes = self.reader, head.method, False
        while True:
            try:
                response = reader.next_response(method)
            except WireError as e:
                raise RemoteProtocolError(f"{self.name} broke HTTP/1.1: {e}") from None
            if response is None:
                data = await self._read(65536)
                if not data:
                    raise ConnectionLost(f"{self.name}: connection closed before the response",
                                         retryable=not got_bytes)
                got_bytes = True
                reader.receive_data(data)
                continue
            if response.status < 200:
                continue
            self._keep_alive = response.keep_alive
            return ResponseHead(response.status, response.reason,
                                tuple([(n, v) for n, v in response.headers if n.lower() not in HOP_BY_HOP]),
                                response.body, response.http_version)

    async def _tunnel_answer(self) -> None:
        """Read the answer to the CONNECT written ahead of the first request: its refusal is
        raised (``UpstreamStatusError`` and kin: the request never reached the origin), the
        bytes behind a 200 are the response's first. A connection the proxy closed or broke
        before answering is a retryable ``ConnectionLost`` (a warm one closed just then)."""
        proxy, target, timeout = self.connect_answer
        self.connect_answer = None
        try:
            leftover = await read_connect_response(self.transport, proxy=proxy, target=target, timeout=timeout)
        except RemoteProtocolError as e:
            raise ConnectionLost(str(e), retryable=True) from None
        if leftover:
            self.reader.receive_data(leftover)

    async def _read(self, read_size: int) -> bytes:
        try:
            return await self.transport.read(read_size)
        except (ConnectionError, OSError):
            return b""

    async def read_body(self, read_size: int = 65536) -> bytes:
        """The next piece of the response body, reading as needed; ``b""`` at its end.

        Raises :class:`RemoteProtocolError` for broken framing or an EOF mid-body.
        """
        reader = self.reader
        while True:
            try:
                data = reader.next_body()
            except WireError as e:
                if reader.is_closed:
                    raise RemoteProtocolError(f"{self.name} closed the connection mid-body") from None
                raise RemoteProtocolError(f"{self.name} broke HTTP/1.1: {e}") from None
            if data is not None:
                return data
            reader.receive_data(await self._read(read_size))

    def can_reuse(self) -> bool:
        """After a complete exchange: may the next request go here?"""
        return (self._sent and self._keep_alive and self.reader.body_is_done() and not self.reader.buffered()
                and not self.transport.is_closing())

    def restart_after_splice(self) -> bool:
        """After a body went around the reader (spliced): make the connection ready for the
        next request, if it may carry one; True if so (a fresh reader takes over)."""
        if self._sent and self._keep_alive and not self.transport.is_closing():
            self.reader = MessageReader(MAX_HEAD)
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
            data = await self._conn.read_body(max(max_bytes, 16384))
        except BaseException:
            self._release(False)
            raise
        if data:
            return data
        self._done = True
        self._release(self._conn.can_reuse())
        return b""

    def read_nowait(self) -> bytes | None:
        """Body bytes already received, without I/O: ``b""`` once complete (the connection is
        then released), None if none are here yet or the framing is broken (``read`` says how)."""
        if self._done:
            return b""
        try:
            data = self._conn.reader.next_body()
        except WireError:
            return None
        if data is None:
            return None
        self._started = True
        if data:
            return data
        self._done = True
        self._release(self._conn.can_reuse())
        return b""

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
        held = conn.reader.buffered()  # body bytes received with the head
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
                data = self._conn.reader.next_body()
            except WireError:
                data = None
            if data == b"":
                self._done = True
                self._release(self._conn.can_reuse())
        self._release(False)

    def _release(self, reusable: bool) -> None:
        if not self._released:
            self._released = True
            self._on_release(reusable)
