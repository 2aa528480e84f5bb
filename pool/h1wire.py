"""HTTP/1.1 on the wire, sans-I/O: heads parsed from bytes and written as bytes, bodies framed.

The common path of both relays (:mod:`atlantic.forwarder.http1` reads requests, writes
responses; :mod:`.http11` writes requests, reads responses) without h11's events and
state machine. A :class:`MessageReader` takes received bytes (``receive_data``, ``b""``
at EOF) and hands out a head, then body bytes, then ``b""`` at the body's end (``None``
while it needs more); :mod:`.h1write` writes heads and frames bodies going out.

Strict as h11 is, with its answers: every line must match RFC 9112's grammar (a bare LF
ends a line and obs-fold becomes one space, as in h11), Content-Length values agree,
``chunked`` is the only coding (else 501), a head fits in ``max_head`` (else 431), an
HTTP/1.1 request has one Host. Each problem is a one-line :class:`WireError`.

Not llhttp (httptools): it parses a head in about the same time (3 vs 4 us; h11 takes
~30 us plus its events), but cannot be told a response answers HEAD, eats the body bytes
a splice leaves in the socket, and strictly refuses what the relay relays (Transfer-
Encoding with Content-Length, a repeated identical Content-Length, a bare LF).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_REQUEST_HEAD", "MAX_RESPONSE_HEAD", "MessageReader", "Request", "Response", "WireError"]

MAX_REQUEST_HEAD = 16 * 1024  # h11's default: a longer request head is answered 431
MAX_RESPONSE_HEAD = 64 * 1024

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_CONTENT = rb"(?:%s+(?:[ \t]+%s+)*)?" % (_VCHAR, _VCHAR)  # a field value (h11's field-content)
_FIELD_LINES = re.compile(rb"(?:%s:[ \t]*%s[ \t]*\r?\n)*" % (_TOKEN, _CONTENT))
_FIELD_LINE = re.compile(rb"%s:[ \t]*%s[ \t]*\r?" % (_TOKEN, _CONTENT))
_REQUEST_LINE = re.compile(rb"(%s) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r?\n" % _TOKEN)
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([ \t\x21-\x7e\x80-\xff]*))?\r?\n")
_BLANK = re.compile(rb"\n\r?\n")
_FOLD = re.compile(rb"\r?\n[ \t]+")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")


class WireError(ValueError):
    """Bytes that are not HTTP/1.1 (or, from :mod:`.h1write`, a head that cannot be written
    as it): one line; ``status`` is what a server answers (400, 431 or 501)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def shown(data: bytes | str) -> str:
    """``data`` quoted for a one-line message: ASCII only, bounded."""
    return ascii(data if len(data) <= 60 else data[:60])


@dataclass(frozen=True, slots=True)
class Request:
    """A request head: Latin-1 text as received (names keep their case); ``body`` is 0
    without a body, n for Content-Length, None for chunked."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    body: int | None
    keep_alive: bool  # neither ``Connection: close`` nor HTTP/1.0
    expects_continue: bool  # ``Expect: 100-continue`` from an HTTP/1.1 client
    has_both_lengths: bool  # Transfer-Encoding and Content-Length: chunked wins (RFC 9112 §6.1)


@dataclass(frozen=True, slots=True)
class Response:
    """A response head (1xx too); ``body``: 0, n for Content-Length, None for chunked or,
    with ``until_close``, for a body that ends when the connection does."""

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: int | None
    until_close: bool
    keep_alive: bool  # neither ``Connection: close`` nor HTTP/1.0


def _first_line(buf: bytes, start: int) -> str:
    end = buf.find(b"\n", start)
    return shown(buf[start:end].rstrip(b"\r"))


def _fields(buf: bytes, start: int, end: int) -> list[tuple[str, str]]:
    """The header lines ``buf[start:end]`` (each ending in a line break) as text pairs."""
    if _FIELD_LINES.fullmatch(buf, start, end) is None:
        block = buf[start:end]
        if block[:1] not in (b" ", b"\t") and _FOLD.search(block) is not None:
            block = _FOLD.sub(b" ", block)  # obs-fold: one space (RFC 9112 §5.2)
            if _FIELD_LINES.fullmatch(block) is not None:
                return _fields(block, 0, len(block))
        bad = next((line for line in block.split(b"\n") if not _FIELD_LINE.fullmatch(line)), block)
        raise WireError(f"illegal header line {shown(bad)}")
    out = []
    for line in buf[start:end].decode("latin-1").split("\n")[:-1]:
        name, _, value = line.partition(":")
        out.append((name, value.strip(" \t\r")))
    return out


def _comma_tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",")]


def _framing(headers: list[tuple[str, str]], version: str) -> tuple[int | None, bool, bool, int, str]:
    """(length, chunked, keep_alive, Host count, Expect tokens) from the headers, h11's rules."""
    lengths: list[str] | None = None
    chunked = False
    keep_alive = version >= "1.1"
    hosts = 0
    expect = ""
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            values = [v.strip() for v in value.split(",")]
            if not all(_DIGITS.match(v) for v in values):
                raise WireError(f"bad Content-Length {shown(value)}")
            lengths = values if lengths is None else lengths + values
        elif lname == "transfer-encoding":
            if chunked:
                raise WireError("multiple Transfer-Encoding headers", 501)
            if value.lower() != "chunked":
                raise WireError(f"Transfer-Encoding {shown(value)}: only chunked is supported", 501)
            chunked = True
        elif lname == "host":
            hosts += 1
        elif lname == "connection":
            if "close" in _comma_tokens(value):
                keep_alive = False
        elif lname == "expect":
            expect += "," + value
    length = None
    if lengths is not None:
        if len(set(lengths)) != 1:
            raise WireError("conflicting Content-Length headers")
        length = int(lengths[0])
    return length, chunked, keep_alive, hosts, expect


class MessageReader:
    """Heads and bodies out of one connection's received bytes (sans-I/O)."""

    __slots__ = ("_buf", "_pos", "_scanned", "is_closed", "max_head", "_body")

    def __init__(self, max_head: int) -> None:
        self._buf = b""
        self._pos = 0  # bytes before it are consumed
        self._scanned = 0  # no head end before it (a head fed one byte at a time stays linear)
        self.is_closed = False  # EOF received
        self.max_head = max_head
        self._body: _Body | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` is EOF."""
        if not data:
            self.is_closed = True
        elif self._pos >= len(self._buf):
            self._buf, self._pos, self._scanned = data, 0, 0
        else:
            pos = self._pos
            self._buf = self._buf[pos:] + data
            self._scanned -= pos
            self._pos = 0

    def buffered(self) -> bytes:
        """The bytes received and not consumed yet (left in place)."""
        return self._buf[self._pos:]

    def pending(self) -> int:
        """How many received bytes are not consumed yet."""
        return len(self._buf) - self._pos

    def take_buffered(self, max_bytes: int) -> bytes:
        """Consume and return up to ``max_bytes`` of the bytes held (a body spliced around us)."""
        out = self._buf[self._pos:self._pos + max_bytes]
        self._pos += len(out)
        return out

    def _head(self) -> tuple[int, int] | None:
        """(start, lines_end) of the next complete head in the buffer (its header lines end
        at ``lines_end``, where the blank line starts), or None for more bytes."""
        buf, pos = self._buf, self._pos
        match = _BLANK.search(buf, max(pos, self._scanned - 2))
        if match is None:
            self._scanned = len(buf)
            if len(buf) - pos > self.max_head:
                raise WireError(f"the head is longer than {self.max_head} bytes", 431)
            if self.is_closed and len(buf) > pos:
                raise WireError("peer unexpectedly closed the connection mid-head")
            return None
        end = match.end()
        if end - pos > self.max_head:
            raise WireError(f"the head is longer than {self.max_head} bytes", 431)
        self._pos = self._scanned = end
        return pos, match.start() + 1

    def next_request(self) -> Request | None:
        """The next request head, or None for more bytes (at EOF: the connection ended)."""
        buf, pos = self._buf, self._pos
        if pos < len(buf) and buf[pos] < 0x21:
            raise WireError("illegal request line (it starts with a blank or control byte)")
        span = self._head()
        if span is None:
            return None
        start, end = span
        line = _REQUEST_LINE.match(buf, start, end)
        if line is None:
            raise WireError(f"illegal request line {_first_line(buf, start)}")
        version = line.group(3).decode()
        headers = _fields(buf, line.end(), end)
        length, chunked, keep_alive, hosts, expect = _framing(headers, version)
        if hosts > 1:
            raise WireError("more than one Host header")
        if hosts == 0 and version == "1.1":
            raise WireError("no Host header (HTTP/1.1 requires one)")
        body = None if chunked else (length or 0)
        self._body = _Body(body, False) if body != 0 else None
        return Request(line.group(1).decode(), line.group(2).decode(), version, headers, body, keep_alive,
                       bool(expect) and version >= "1.1" and "100-continue" in _comma_tokens(expect),
                       chunked and length is not None)

    def next_response(self, method: str) -> Response | None:
        """The next response head (1xx too) to a ``method`` request, or None for more bytes."""
        span = self._head()
        if span is None:
            return None
        buf = self._buf
        start, end = span
        line = _STATUS_LINE.match(buf, start, end)
        if line is None:
            raise WireError(f"illegal status line {_first_line(buf, start)}")
        version = line.group(1).decode()
        status = int(line.group(2))
        headers = _fields(buf, line.end(), end)
        length, chunked, keep_alive, _, _ = _framing(headers, version)
        until_close = False
        if status < 200 or status in (204, 304) or method == "HEAD":
            body: int | None = 0
        elif chunked:
            body = None
        elif length is not None:
            body = length
        else:
            body, until_close, keep_alive = None, True, False
        self._body = _Body(body, until_close) if body != 0 else None
        return Response(status, (line.group(3) or b"").decode("latin-1"), version, headers, body, until_close,
                        keep_alive)

    def next_body(self) -> bytes | None:
        """Body bytes; ``b""`` once the body is complete; None for more bytes.

        Raises :class:`WireError` for broken chunked framing, or EOF before the body's end.
        """
        body = self._body
        if body is None:
            return b""
        out = body.take(self)
        if out is None and self.is_closed:
            if body.until_close:
                out = b""
            else:
                raise WireError("peer closed the connection without sending the complete body")
        if out == b"":
            self._body = None
        return out

    def body_is_done(self) -> bool:
        """True once the current message's body was read to its end (or it has none)."""
        return self._body is None


class _Body:
    """The framing state of one body being read: Content-Length, chunked, or until EOF."""

    __slots__ = ("remaining", "chunked", "until_close", "state")

    def __init__(self, length: int | None, until_close: bool) -> None:
        self.remaining = length or 0
        self.chunked = length is None and not until_close
        self.until_close = until_close
        self.state = 0  # chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers

    def take(self, r: MessageReader) -> bytes | None:
        buf, pos = r._buf, r._pos
        avail = len(buf) - pos
        if not self.chunked:
            if self.until_close:
                if not avail:
                    return None
                r._pos = len(buf)
                return buf if pos == 0 else buf[pos:]
            if self.remaining == 0:
                return b""
            if not avail:
                return None
            n = min(avail, self.remaining)
            self.remaining -= n
            r._pos = pos + n
            return buf if pos == 0 and n == len(buf) else buf[pos:pos + n]
        while True:
            state = self.state
            if state == 1:
                if pos >= len(buf):
                    return None
                n = min(len(buf) - pos, self.remaining)
                self.remaining -= n
                r._pos = pos + n
                if not self.remaining:
                    self.state = 2
                return buf[pos:pos + n]
            if state == 2:
                got = buf[pos:pos + 2]
                if got != b"\r\n"[:len(got)]:
                    raise WireError("missing CRLF after a chunk")
                if len(got) < 2:
                    return None
                pos = r._pos = pos + 2
                self.state = 0
            elif state == 0:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if len(buf) - pos > r.max_head:
                        raise WireError("chunk header line too long", 431)
                    return None
                line = _CHUNK_HEADER.fullmatch(buf, pos, nl + 1)
                if line is None:
                    raise WireError(f"illegal chunk header {shown(buf[pos:nl + 1])}")
                self.remaining = int(line.group(1), 16)
                pos = r._pos = nl + 1
                self.state = 1 if self.remaining else 3
            else:  # trailers, then the blank line ending the body
                if buf.startswith(b"\r\n", pos) or buf.startswith(b"\n", pos):
                    r._pos = pos + (2 if buf[pos] == 0x0D else 1)
                    return b""
                match = _BLANK.search(buf, pos)
                if match is None:
                    if len(buf) - pos > r.max_head:
                        raise WireError("trailers too long", 431)
                    return None
                _fields(buf, pos, match.start() + 1)
                r._pos = match.end()
                return b""
