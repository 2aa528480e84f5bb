"""HTTP/1.1 CONNECT, sans-I/O: request bytes out, response head parsed from bytes in.

Pure core: no sockets, no clock. The async adapter (:mod:`.tunnel`) writes
:func:`build_connect_request`'s bytes, feeds what it reads to a
:class:`ConnectResponseParser` until it returns a :class:`ConnectResponse`, then
calls :func:`raise_for_status`. Bytes the proxy sent after the head belong to
the application and come back in ``ConnectResponse.leftover``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import (
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamRefusedError,
    UpstreamStatusError,
    UpstreamTargetError,
)

__all__ = [
    "MAX_HEAD_SIZE",
    "ConnectResponse",
    "ConnectResponseParser",
    "basic_authorization",
    "build_connect_request",
    "format_authority",
    "raise_for_status",
]

MAX_HEAD_SIZE = 16 * 1024  # Squid answers in ~200 bytes; anything near this is not a proxy
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?$")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BAD_FIELD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def format_authority(host: str, port: int) -> str:
    """``host:port`` for a CONNECT line, with an IPv6 literal in brackets."""
    if not 0 < port < 65536:
        raise ValueError(f"bad target port {port} (expected 1-65535)")
    if not host or _BAD_FIELD_CHARS.search(host) or " " in host or "/" in host:
        raise ValueError(f"bad target host {host!r}")
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def basic_authorization(username: str, password: str | None) -> str:
    """``Basic base64(user:pass)`` with UTF-8 credentials (RFC 7617)."""
    raw = f"{username}:{password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def build_connect_request(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The bytes of ``CONNECT host:port HTTP/1.1`` with ``Host`` and optional auth.

    ``extra_headers`` are appended in order (e.g. provider session headers);
    names must be HTTP tokens and values may not contain CR/LF.
    """
    authority = format_authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if username is not None:
        lines.append(f"Proxy-Authorization: {basic_authorization(username, password)}")
    for name, value in extra_headers:
        if not _TOKEN.match(name.encode("latin-1", "replace")):
            raise ValueError(f"bad header name {name!r}")
        if _BAD_FIELD_CHARS.search(value):
            raise ValueError(f"bad value for header {name!r}: control characters")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """A complete CONNECT response head and the bytes that followed it."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    leftover: bytes = b""

    @property
    def is_success(self) -> bool:
        """2xx: the tunnel is open (RFC 9110 §9.3.6)."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


class ConnectResponseParser:
    """Feed bytes with :meth:`feed`; get None until the head is complete.

    Interim 1xx heads are skipped. A head larger than ``max_head_size`` or
    not HTTP/1.x raises :class:`RemoteProtocolError` (message lacks the proxy
    name; the adapter adds it). After completion the parser is done: feeding
    more is a caller bug.
    """

    __slots__ = ("_buf", "_max", "_scan_from", "_done")

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_head_size
        self._scan_from = 0
        self._done = False

    @property
    def is_done(self) -> bool:
        """True once a final response has been returned."""
        return self._done

    def feed(self, data: bytes) -> ConnectResponse | None:
        """Add received bytes; return the response once its head is complete."""
        if self._done:
            raise RuntimeError("ConnectResponseParser.feed() after the response was complete")
        self._buf += data
        while True:
            # Fail at once on a peer that is not speaking HTTP, not at the size limit.
            if self._buf[:5] != b"HTTP/"[: len(self._buf)]:
                shown = bytes(self._buf[:20]).decode("latin-1").encode("unicode_escape")
                raise RemoteProtocolError(f"not an HTTP response: {shown.decode('ascii')!r}")
            m = _HEAD_END.search(self._buf, self._scan_from)
            if m is None:
                if len(self._buf) > self._max:
                    raise RemoteProtocolError(f"response head larger than {self._max} bytes")
                # The terminator is at most 4 bytes: rescan only the tail next time.
                self._scan_from = max(0, len(self._buf) - 3)
                return None
            if m.end() > self._max:
                raise RemoteProtocolError(f"response head larger than {self._max} bytes")
            head = bytes(self._buf[: m.start()])
            del self._buf[: m.end()]
            self._scan_from = 0
            status, reason, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # interim response; the real one follows
            self._done = True
            leftover = bytes(self._buf)
            self._buf = bytearray()
            return ConnectResponse(status, reason, headers, leftover)

    def eof(self) -> None:
        """The proxy closed before a complete head: raise RemoteProtocolError."""
        if self._done:
            return
        if self._buf:
            raise RemoteProtocolError(
                f"connection closed mid-way through the response head ({len(self._buf)} bytes)"
            )
        raise RemoteProtocolError("connection closed without a response")


def _parse_head(head: bytes) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    m = _STATUS_LINE.match(lines[0])
    if m is None:
        shown = lines[0][:60].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise RemoteProtocolError(f"malformed status line {shown!r}")
    status = int(m[1])
    reason = (m[2] or b"").decode("latin-1").strip()
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise RemoteProtocolError("obsolete header line folding in response head")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            shown = line[:60].decode("latin-1").encode("unicode_escape").decode("ascii")
            raise RemoteProtocolError(f"malformed header line {shown!r}")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return status, reason, tuple(headers)


def raise_for_status(response: ConnectResponse, *, proxy: str, target: str) -> None:
    """Return if the tunnel is open, else raise the error that says who is at fault.

    ``proxy`` must already be redacted (``Upstream.redacted()``); ``target``
    is ``host:port``.
    """
    status = response.status
    if response.is_success:
        return
    said = f"{status} {response.reason}".strip()
    if status == 407:
        raise UpstreamAuthError(
            f"proxy {proxy} rejected the credentials ({said}) for CONNECT {target}: "
            "check the user name and password",
            status,
        )
    if status == 403:
        raise UpstreamRefusedError(
            f"proxy {proxy} refused CONNECT {target} ({said}): the proxy's policy forbids "
            "this target or port",
            status,
        )
    if status in (502, 503, 504):
        raise UpstreamTargetError(
            f"proxy {proxy} could not reach {target} ({said})", status
        )
    raise UpstreamStatusError(f"proxy {proxy} answered CONNECT {target} with {said}", status)
