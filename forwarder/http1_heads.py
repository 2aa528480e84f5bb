"""HTTP/1.x heads between the application and the pool, sans-I/O.

Pure core of the request relay (:mod:`.http1`): what the application sent becomes a
:class:`~atlantic.pool.api.RequestHead` (origin-form target, end-to-end headers, the
origin named by the Host header), a :class:`~atlantic.pool.api.ResponseHead` becomes
the response head sent back (framed by h11's rules, written by :mod:`atlantic.pool.h1write`),
and an upstream failure becomes a one-line plain-text error response that says who is
at fault.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from atlantic.pool.errors import (
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRefusedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from atlantic.pool.api import Endpoint, Headers, RequestHead, ResponseHead
from atlantic.pool.h1write import BodyWriter, head_bytes, status_line

__all__ = [
    "HOP_BY_HOP",
    "for_name",
    "BadRequest",
    "ErrorReply",
    "bad_request_reply",
    "end_to_end",
    "error_reply",
    "failure_kind",
    "where",
    "is_tunnel_request",
    "request_head",
    "response_bytes",
    "response_headers",
    "split_host",
]

# RFC 9110 §7.6.1 plus the proxy-only fields; Expect is answered by us (see http1.py).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
_NO_BODY_STATUS = frozenset({204, 304})
# An RFC 3986 reg-name in ASCII: HTTP lets obs-text (bytes 0x80-0xff) through in a Host
# value (so does the parser, as h11 did), and no upstream can carry it (IDNs travel in their xn-- form).
_HOST_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]{1,255}\Z")
_PHRASES = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 501: "Not Implemented"}


def _shown(text: str) -> str:
    """``text`` quoted for a one-line reason: ASCII only (bytes above 0x7f escaped), bounded."""
    return ascii(text if len(text) <= 80 else text[:80] + "...")


class BadRequest(ValueError):
    """The application's request cannot be relayed; the message is the 400 body."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A response Atlantic writes itself: status, reason phrase and a one-line body."""

    status: int
    reason: str
    body: bytes

    def headers(self) -> list[tuple[str, str]]:
        """Plain text, length known, connection closed afterwards."""
        return [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(self.body))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]


def end_to_end(headers: list[tuple[str, str]], *, drop_expect: bool = False) -> Headers:
    """``headers`` without hop-by-hop fields nor the fields ``Connection`` names."""
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(","))
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named:
            continue
        if drop_expect and lname == "expect":
            continue
        out.append((name, value))
    return tuple(out)


def split_host(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) into a lowercase host and the port or None."""
    authority = authority.strip()
    shown = _shown(authority)
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise BadRequest(f"bad Host {shown}: unclosed IPv6 bracket")
        host, rest = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest(f"bad Host {shown}: not an IPv6 address") from None
    else:
        host, sep, port = authority.rpartition(":")
        if not sep:
            host, rest = authority, ""
        else:
            rest = ":" + port
    port_value = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not digits.isascii() or not digits.isdigit() or not 0 < int(digits) < 65536:
            raise BadRequest(f"bad Host {shown}: bad port")
        port_value = int(digits)
    if not authority.startswith("[") and not _HOST_NAME.match(host):
        if not host.isascii():
            raise BadRequest(f"bad Host {shown}: not an ASCII host name (send an international "
                             "name in its xn-- form)")
        raise BadRequest(f"bad Host {shown}: not a host name")
    host = host.lower().rstrip(".")
    if not host:
        raise BadRequest(f"bad Host {shown}: not a host name")
    return host, port_value


def is_tunnel_request(method: str, headers: list[tuple[str, str]]) -> bool:
    """CONNECT, or a request asking to switch protocols (WebSocket, h2c): a byte tunnel."""
    if method == "CONNECT":
        return True
    return any(name.lower() == "upgrade" for name, _ in headers)


def for_name(head: RequestHead, name: str) -> RequestHead:
    """``head`` sent to ``name`` instead of an address literal (a fake-IP the app used as is)."""
    endpoint = Endpoint(head.endpoint.scheme, name, head.endpoint.port)
    headers = tuple((n, endpoint.authority) if n.lower() == "host" else (n, v) for n, v in head.headers)
    return replace(head, endpoint=endpoint, headers=headers)


def request_head(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    dst: tuple[str, int],
    body_length: int | None,
) -> RequestHead:
    """The pool request for one application request.

    The origin is the absolute-form URL's authority if the application sent one, else
    the Host header's name, else the destination address; the port is the URL's, else
    the destination port (the flow went there). Raises :class:`BadRequest`.
    """
    dst_host, dst_port = dst
    if target.startswith("/") or target == "*":
        host_value = next((v for n, v in headers if n.lower() == "host"), None)
        host = split_host(host_value)[0] if host_value else dst_host
        endpoint = Endpoint("http", host, dst_port)
        out = end_to_end(headers, drop_expect=True)
        if host_value is None:
            out = (("Host", endpoint.authority), *out)
        return RequestHead(method, endpoint, target, out, body_length)
    try:
        url = urlsplit(target)
    except ValueError:
        raise BadRequest(f"bad request target {target[:80]!r}") from None
    if url.scheme.lower() != "http" or not url.netloc:
        if url.scheme.lower() == "https":
            raise BadRequest("https:// request targets are not relayed: send CONNECT or speak TLS to the origin")
        raise BadRequest(f"bad request target {target[:80]!r}: expected /path or http://host/path")
    host, port = split_host(url.netloc.rpartition("@")[2])
    endpoint = Endpoint("http", host, port or 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    # The absolute-form authority wins over any Host header (RFC 9112 §3.2.2).
    out = end_to_end([(n, v) for n, v in headers if n.lower() != "host"], drop_expect=True)
    return RequestHead(method, endpoint, path, (("Host", endpoint.authority), *out), body_length)


def response_headers(head: ResponseHead, request_method: str) -> list[tuple[str, str]]:
    """Headers to send: end-to-end only, framing left to :func:`response_bytes`.

    With a body, Content-Length is set from ``body_length`` when known (else chunked, or
    close-delimited for HTTP/1.0 applications). Responses without a body
    (HEAD, 204, 304) keep the upstream's Content-Length: it describes the GET.
    """
    headers = list(end_to_end(list(head.headers)))
    if request_method == "HEAD" or head.status in _NO_BODY_STATUS:
        return headers
    headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    if head.body_length is not None:
        headers.append(("Content-Length", str(head.body_length)))
    return headers


def response_bytes(status: int, reason: str, headers: list[tuple[str, str]], *, method: str,
                   http_version: str, keep_alive: bool) -> tuple[bytes, BodyWriter, bool]:
    """A response head as bytes, the writer that frames its body, and whether the
    connection may carry another request after it; h11's framing rules.

    The body goes with Content-Length if ``headers`` has one, else chunked to an HTTP/1.1
    client, else until the connection closes; HEAD, 204 and 304 responses have none.
    ``Connection: close`` is added when the connection ends after this response.
    Raises :class:`~atlantic.pool.h1wire.WireError` if the head cannot be written.
    """
    length = next((v for n, v in headers if n.lower() == "content-length"), None)
    if status in _NO_BODY_STATUS:
        writer = BodyWriter(0, chunked=False)
    elif length is not None:
        writer = BodyWriter(0 if method == "HEAD" else int(length), chunked=False)
    elif http_version < "1.1":
        writer = BodyWriter(0 if method == "HEAD" else None, chunked=False)
        keep_alive = keep_alive and method == "HEAD"  # else the body ends with the connection
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        writer = BodyWriter(0, chunked=False) if method == "HEAD" else BodyWriter(None, chunked=True)
    if not keep_alive:
        headers.append(("Connection", "close"))
    if not reason.isascii():
        reason = reason.encode("latin-1", "replace").decode("latin-1")
    return head_bytes(status_line(status, reason), headers), writer, keep_alive


def error_reply(exc: BaseException) -> ErrorReply:
    """The response the application gets when the upstream failed before a response head."""
    if isinstance(exc, UpstreamTimeoutError):
        return _reply(504, "Gateway Timeout", f"upstream timed out: {exc}")
    if isinstance(exc, UpstreamAuthError):
        return _reply(502, "Bad Gateway", f"the upstream proxy rejected Atlantic's credentials: {exc}")
    if isinstance(exc, UpstreamRefusedError):
        return _reply(502, "Bad Gateway", f"the upstream proxy refused the request: {exc}")
    if isinstance(exc, UpstreamStatusError):
        status = 504 if exc.status == 504 else 502
        return _reply(status, "Gateway Timeout" if status == 504 else "Bad Gateway", f"upstream error: {exc}")
    if isinstance(exc, UpstreamUnreachableError):
        return _reply(502, "Bad Gateway", f"upstream unreachable: {exc}")
    if isinstance(exc, RemoteProtocolError):
        return _reply(502, "Bad Gateway", f"the upstream sent a broken response: {exc}")
    if isinstance(exc, UpstreamError):
        return _reply(502, "Bad Gateway", f"upstream error: {exc}")
    if isinstance(exc, OSError):
        return _reply(502, "Bad Gateway", f"upstream connection failed: {exc.strerror or exc}")
    return _reply(502, "Bad Gateway", f"internal error in Atlantic's relay ({type(exc).__name__}): see the daemon log")


def failure_kind(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, without the details that vary per flow (the
    destination, the proxy's words): the key under which failures are counted and
    logged at most once a minute. A bug is its type and where it was raised."""
    name = type(exc).__name__
    if isinstance(exc, UpstreamStatusError):
        return f"{name} {exc.status}"
    if isinstance(exc, UpstreamError):
        return name
    if isinstance(exc, OSError):
        return f"{name} {exc.errno}" if exc.errno is not None else name
    return f"{name} at {where(exc)}"


def where(exc: BaseException) -> str:
    """``file.py:line`` where ``exc`` was raised (its innermost frame), or ``?``."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rpartition('/')[2]}:{tb.tb_lineno}"


def bad_request_reply(reason: str, status: int = 400) -> ErrorReply:
    """The response to a request Atlantic cannot parse or relay (the application's fault)."""
    if status not in _PHRASES:
        status = 400
    return _reply(status, _PHRASES[status], f"bad request: {reason}")


def _reply(status: int, reason: str, text: str) -> ErrorReply:
    line = " ".join(text.split())  # one line, whatever the exception said
    return ErrorReply(status, reason, f"Atlantic: {line}\n".encode())
