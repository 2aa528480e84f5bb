"""HTTP/1.1 going out, sans-I/O: heads written as bytes, bodies framed (h11's checks).

The writing half of :mod:`.h1wire`: the pool's connections (:mod:`.http11`) write
requests, the request relay (:mod:`atlantic.forwarder.http1`) writes responses. What
would not be valid HTTP/1.1, or would smuggle a line into a head, is a one-line
:class:`~.h1wire.WireError` before any byte is written.
"""

from __future__ import annotations

import re

from atlantic.pool.h1wire import WireError, shown

__all__ = ["BodyWriter", "head_bytes", "request_line", "status_line"]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_CONTENT = rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?"
_LINES = re.compile(rb"(?:%s: %s\r\n)*\r\n" % (_TOKEN.encode(), _CONTENT))  # no blanks around values
_TOKEN_TEXT = re.compile(_TOKEN + r"\Z")
_TARGET_TEXT = re.compile(r"[\x21-\x7e]+\Z")
_REASON_TEXT = re.compile(r"[ \t\x21-\x7e\x80-\xff]*\Z")


def head_bytes(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    """A head as sent: ``start_line``, then ``name: value`` lines, then a blank line.

    Latin-1 (one byte per character, as the parsers decode); raises :class:`WireError`
    if a name is not a token or a value has a control character, a character beyond
    Latin-1 or blanks at either end (h11's checks)."""
    try:
        block = "".join([f"{n}: {v}\r\n" for n, v in headers]).encode("latin-1") + b"\r\n"
    except UnicodeEncodeError as exc:
        raise WireError(f"a header has a character beyond Latin-1 ({exc.object[exc.start:exc.end]!a})") from None
    # one line per header: a line break inside a name or value would smuggle a header in
    if _LINES.fullmatch(block) is None or block.count(b"\n") != len(headers) + 1:
        bad = next((f"{n}: {v}" for n, v in headers
                    if "\n" in n + v or not _LINES.fullmatch(f"{n}: {v}\r\n\r\n".encode("latin-1"))), "?")
        raise WireError(f"illegal header {shown(bad)}")
    return start_line.encode("latin-1") + b"\r\n" + block


def request_line(method: str, target: str) -> str:
    """``METHOD target HTTP/1.1``; WireError unless both are as HTTP allows."""
    if not _TOKEN_TEXT.match(method):
        raise WireError(f"illegal method {shown(method)}")
    if not _TARGET_TEXT.match(target):
        raise WireError(f"illegal request target {shown(target)}")
    return f"{method} {target} HTTP/1.1"


def status_line(status: int, reason: str) -> str:
    """``HTTP/1.1 status reason``; WireError unless the status has three digits (and is not
    1xx) and the reason is text."""
    if not 200 <= status <= 999:
        raise WireError(f"status {status} is not a final 3-digit status")
    if not _REASON_TEXT.match(reason):
        raise WireError(f"illegal reason phrase {shown(reason)}")
    return f"HTTP/1.1 {status} {reason}"


class BodyWriter:
    """Frames a body going out: Content-Length (checked), chunked, or raw (until close)."""

    __slots__ = ("length", "chunked", "sent")

    def __init__(self, length: int | None, *, chunked: bool) -> None:
        self.length = length  # None: chunked, or raw with the close marking the end
        self.chunked = chunked
        self.sent = 0

    def data(self, data: bytes) -> bytes:
        """``data`` framed; WireError past the declared Content-Length."""
        self.sent += len(data)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if self.length is not None and self.sent > self.length:
            raise WireError(f"more body than the declared Content-Length ({self.length})")
        return data

    def end(self) -> bytes:
        """The end of the body; WireError if fewer bytes than the Content-Length went out."""
        if self.chunked:
            return b"0\r\n\r\n"
        if self.length is not None and self.sent != self.length:
            raise WireError(f"less body than the declared Content-Length ({self.sent} of {self.length})")
        return b""
