"""The HTTP/1.1 wire format (pool/h1wire.py, pool/h1write.py): heads and bodies parsed whole
and one byte at a time (h11's way), heads and bodies written, every malformed head a WireError."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlantic.pool.h1wire import MAX_REQUEST_HEAD, MAX_RESPONSE_HEAD, MessageReader, WireError
from atlantic.pool.h1write import BodyWriter, head_bytes, request_line, status_line

CHUNKED_POST = (b"POST /up?x=1 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n"
                b"X-Pad:  two  words \r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\n")
PIPELINED = CHUNKED_POST + b"GET /next HTTP/1.1\nHost: b\n\n"


def feeds(data: bytes, step: int | None) -> list[bytes]:
    """``data`` whole or in ``step``-byte pieces, then EOF (``b""``)."""
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    return [*pieces, b""]


def read_requests(data: bytes, step: int | None = None) -> list:
    """Requests and body pieces out of ``data`` fed whole or ``step`` bytes at a time."""
    reader = MessageReader(MAX_REQUEST_HEAD)
    out: list = []
    in_body = False
    for piece in feeds(data, step):
        reader.receive_data(piece)
        while True:
            if not in_body:
                got = reader.next_request()
                if got is None:
                    break
                out.append(got)
                in_body = True
            else:
                got = reader.next_body()
                if got is None:
                    break
                if got == b"":
                    out.append("end")
                    in_body = False
                else:
                    out.append(got)
    return out


def joined(events: list) -> list:
    """Consecutive body pieces joined (byte-at-a-time feeding splits them)."""
    out: list = []
    for e in events:
        if isinstance(e, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += e
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_pipelined_requests_parse_the_same_whole_or_byte_at_a_time(step):
    """A chunked POST (extension, trailer, OWS) then a LF-only GET: the same events however the bytes arrive."""
    events = joined(read_requests(PIPELINED, step))
    post, body, end1, get, end2 = events
    assert (post.method, post.target, post.http_version, post.body) == ("POST", "/up?x=1", "1.1", None)
    assert post.headers == [("Host", "a.test"), ("Transfer-Encoding", "chunked"), ("X-Pad", "two  words")]
    assert body == b"hello world" and end1 == end2 == "end"
    assert (get.method, get.target, get.headers, get.body) == ("GET", "/next", [("Host", "b")], 0)


@pytest.mark.parametrize("step", [None, 1])
def test_content_length_body_and_keep_alive(step):
    """Content-Length frames the body; Connection: close and HTTP/1.0 turn keep-alive off."""
    data = (b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nExpect: 100-continue\r\n\r\nhello"
            b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n"
            b"GET /c HTTP/1.0\r\n\r\n")
    put, body, _, b, _, c, _ = joined(read_requests(data, step))
    assert put.body == 5 and body == b"hello" and put.keep_alive and put.expects_continue
    assert not b.keep_alive and not b.expects_continue
    assert not c.keep_alive and c.http_version == "1.0" and c.headers == []


def test_obs_fold_is_one_space():
    """A folded header line (obs-fold) joins its predecessor with one space, as h11 does."""
    (req, _) = read_requests(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n  two\r\n\r\n")
    assert req.headers == [("Host", "a"), ("X-Long", "one two")]


def test_transfer_encoding_with_content_length_is_chunked():
    """TE + CL: chunked framing wins and the request says so (the relay drops the CL)."""
    (req, body, end) = read_requests(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert req.body is None and req.has_both_lengths and body == b"abc" and end == "end"


BAD_REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400, "illegal header line"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "no Host header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400, "bad Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "conflicting"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "only chunked"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
     "multiple Transfer-Encoding"),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "illegal request line"),
    (b"GET / HTTP/1.1 junk\r\nHost: a\r\n\r\n", 400, "illegal request line"),
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "illegal request line"),
    (b"\x16\x03\x01\x02\x00", 400, "illegal request line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "illegal header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "illegal header line"),
    (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "illegal header line"),
    (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", 400, "illegal header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * MAX_REQUEST_HEAD, 431, "longer than"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "illegal chunk header"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX", 400, "missing CRLF"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer\r\n\r\n", 400,
     "illegal header line"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc", 400, "complete body"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 400, "mid-head"),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize(("data", "status", "words"), BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_malformed_requests_are_one_line_errors_with_a_status(data, status, words, step):
    """Every malformed request is a WireError: one ASCII line, the status a server answers, whole or bytewise."""
    with pytest.raises(WireError) as caught:
        read_requests(data, step)
    message = str(caught.value)
    assert words in message and "\n" not in message and message.isascii() and caught.value.status == status


def test_an_idle_eof_is_no_error():
    """EOF with no byte of a next request: no request, no error (the connection just ended)."""
    reader = MessageReader(MAX_REQUEST_HEAD)
    reader.receive_data(b"")
    assert reader.next_request() is None and reader.is_closed


def read_response(data: bytes, method: str = "GET", step: int | None = None) -> list:
    """Response heads (1xx included) and body pieces out of ``data``, ``step`` bytes at a time."""
    reader = MessageReader(MAX_RESPONSE_HEAD)
    out: list = []
    in_body = False
    for piece in feeds(data, step):
        reader.receive_data(piece)
        while True:
            got = reader.next_body() if in_body else reader.next_response(method)
            if got is None:
                break
            if not in_body:
                out.append(got)
                in_body = got.status >= 200
            elif got == b"":
                out.append("end")
                return out
            else:
                out.append(got)
    return out


@pytest.mark.parametrize("step", [None, 1, 3])
def test_responses_whole_or_byte_at_a_time(step):
    """100 Continue, then a chunked 200: the same heads and body however the bytes arrive."""
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n"
            b"4\r\nabcd\r\n0\r\n\r\n")
    cont, ok, body, end = joined(read_response(data, step=step))
    assert cont.status == 100 and cont.body == 0
    assert (ok.status, ok.reason, ok.body, ok.until_close, ok.keep_alive) == (200, "OK", None, False, True)
    assert body == b"abcd" and end == "end"


@pytest.mark.parametrize(("data", "method", "body", "until_close", "keep_alive"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD", 0, False, True),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", "GET", 0, False, True),
    (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET", 0, False, True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "GET", 2, False, False),
    (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", "GET", None, True, False),
    (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", "GET", 2, False, True),
])
def test_response_framing(data, method, body, until_close, keep_alive):
    """Body framing and keep-alive of a response, by status, method and headers (h11's rules)."""
    events = read_response(data, method)
    head = events[0]
    assert (head.body, head.until_close, head.keep_alive) == (body, until_close, keep_alive)
    assert events[-1] == "end"
    if until_close:
        assert events[1] == b"until the end"


BAD_RESPONSES = [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/9 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEAD,
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize("data", BAD_RESPONSES, ids=range(len(BAD_RESPONSES)))
def test_malformed_responses_are_one_line_errors(data, step):
    """A broken response head or body is a one-line WireError, whole or byte at a time."""
    with pytest.raises(WireError) as caught:
        read_response(data, step=step)
    assert "\n" not in str(caught.value) and str(caught.value).isascii()


def test_buffered_bytes_after_a_head_stay_for_a_splice():
    """Body bytes that came with the head stay in the reader until taken (the splice sends them first)."""
    reader = MessageReader(MAX_RESPONSE_HEAD)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    assert reader.next_response("GET").body == 6
    assert reader.pending() == 3 and reader.buffered() == b"abc"
    assert reader.take_buffered(2) == b"ab" and reader.buffered() == b"c"


def test_written_heads_are_what_h11_parses():
    """A head written here parses in h11 to the same request (Latin-1 bytes exact)."""
    data = head_bytes(request_line("POST", "/p?q=1"), [("Host", "a.test"), ("X-Name", "caf\xe9 \xff"),
                                                        ("Content-Length", "3")])
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data + b"abc")
    event = conn.next_event()
    assert (event.method, event.target) == (b"POST", b"/p?q=1")
    assert (b"x-name", b"caf\xe9 \xff") in list(event.headers)
    assert head_bytes(status_line(200, "OK"), []) == b"HTTP/1.1 200 OK\r\n\r\n"


@pytest.mark.parametrize(("make", "words"), [
    (lambda: head_bytes("GET / HTTP/1.1", [("Bad Name", "x")]), "illegal header"),
    (lambda: head_bytes("GET / HTTP/1.1", [("X", "a\r\nInjected: 1")]), "illegal header"),
    (lambda: head_bytes("GET / HTTP/1.1", [("X", " padded")]), "illegal header"),
    (lambda: head_bytes("GET / HTTP/1.1", [("X", "snow \u2603")]), "beyond Latin-1"),
    (lambda: request_line("GET", "/a b"), "illegal request target"),
    (lambda: request_line("G T", "/"), "illegal method"),
    (lambda: status_line(101, "Switching"), "not a final"),
    (lambda: status_line(200, "O\r\nK"), "illegal reason"),
])
def test_unwritable_heads_are_refused(make, words):
    """A head that would not be valid HTTP/1.1 (or would smuggle a line) is refused in one line."""
    with pytest.raises(WireError, match=words) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_body_writer_frames_and_checks_the_length():
    """Chunked framing as h11 writes it; a Content-Length body may be neither longer nor shorter."""
    chunked = BodyWriter(None, chunked=True)
    assert chunked.data(b"abc") + chunked.data(b"") + chunked.end() == b"3\r\nabc\r\n0\r\n\r\n"
    sized = BodyWriter(3, chunked=False)
    assert sized.data(b"ab") == b"ab"
    with pytest.raises(WireError, match="less body"):
        sized.end()
    with pytest.raises(WireError, match="more body"):
        sized.data(b"cd")
    assert BodyWriter(None, chunked=False).data(b"x" * 10) == b"x" * 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), max_size=6), st.integers(1, 5))
def test_chunked_bodies_round_trip(pieces, step):
    """Any body written chunked reads back whole, fed in any step size."""
    writer = BodyWriter(None, chunked=True)
    wire = b"".join(writer.data(p) for p in pieces) + writer.end()
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + wire
    events = joined(read_requests(data, step))
    body = events[1] if len(events) == 3 else b""
    assert body == b"".join(pieces) and events[-1] == "end"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(junk):
    """Any bytes after a request line: a request, more-data, or a WireError, never another exception."""
    try:
        read_requests(b"GET / HTTP/1.1\r\n" + junk, 1)
    except WireError as exc:
        assert "\n" not in str(exc) and 400 <= exc.status <= 501
