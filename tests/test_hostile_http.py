"""Hostile HTTP input (issue 14): what an application sends may fail its own request, never
the relay, the pool, or the log.

Pinned cases first (non-ASCII hosts, Transfer-Encoding with Content-Length, one-line
failures), then a small Hypothesis fuzz of request heads and bodies fed to the real
request relay over a socketpair, with the real pool in front of a loopback origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from http1_peers import LoopbackPool, Origin, app_flow, read_response

from atlantic.forwarder.dispatch import Dispatcher
from atlantic.forwarder.http1 import HttpCounters, serve_http
from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.errors import LocalProtocolError
from atlantic.pool.errors import UpstreamError
from atlantic.pool.exchange import h2_request_headers
from atlantic.pool.http11 import request_bytes
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstream import parse_upstream


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds (only so that a hang fails, never a timing)."""
    return asyncio.run(asyncio.wait_for(coro, limit))


class Sink:
    """A forgiving h11 origin (and, absolute-form, a "proxy") on loopback: any request it
    can parse gets an answer chosen by the target's path; nothing it receives raises."""

    def __init__(self) -> None:
        self.requests: list[h11.Request] = []
        self.server = None
        self.port = 0

    async def __aenter__(self) -> Sink:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(1000):  # bounded: events per connection
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    self.requests.append(event)
                    request, size = event, 0
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(self._answer(conn, request, size))
                    await writer.drain()
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:
                    return
        except Exception:  # noqa: BLE001 - a test peer: whatever breaks, the connection ends
            return
        finally:
            writer.close()

    @staticmethod
    def _answer(conn: h11.Connection, request: h11.Request, size: int) -> bytes:
        path = request.target.split(b"?")[0]
        if request.method == b"CONNECT":
            return conn.send(h11.Response(status_code=403, headers=[("Content-Length", "0")])) + conn.send(h11.EndOfMessage())
        if request.method == b"HEAD":
            return conn.send(h11.Response(status_code=200, headers=[("Content-Length", "4")])) + conn.send(h11.EndOfMessage())
        if path.endswith(b"/204"):
            return conn.send(h11.Response(status_code=204, headers=[])) + conn.send(h11.EndOfMessage())
        if path.endswith(b"/chunked"):
            out = conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
            for piece in (b"a" * 1000, b"b" * 10, b"c"):
                out += conn.send(h11.Data(data=piece))
            return out + conn.send(h11.EndOfMessage())
        body = f"ok {size}".encode()
        return (conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]))
                + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


async def through_proxy(data: bytes, *, proxy: bool = True) -> tuple[bytes, HttpCounters, list, Sink, asyncio.Task]:
    """``data`` from an application through the request relay and the real pool (an http://
    proxy, or direct) to a Sink; returns what the application got, counters, notes."""
    async with Sink() as sink:
        url = f"http://127.0.0.1:{sink.port}" if proxy else "direct"
        async with UpstreamPool(url, warm_tunnels=0) as pool:
            got, counters, notes, task = await exchange(data, pool, ("127.0.0.1", sink.port), to_destination=not proxy)
        return got, counters, notes, sink, task


async def exchange(data: bytes, pool, dst, *, to_destination: bool = False, pieces: tuple[int, ...] = (),
                   head_timeout: float = 5.0, note_error=None):
    """Serve one application connection (a socketpair) that sends ``data`` (split at
    ``pieces``) then EOF; returns (bytes it got until EOF or reset, counters, notes, task).
    Notes go to ``note_error`` if given (then ``notes`` stays empty)."""
    loop = asyncio.get_running_loop()
    app, served = socket.socketpair()
    app.setblocking(False)
    served.setblocking(False)
    counters, notes = HttpCounters(), []
    task = asyncio.create_task(serve_http(served, b"", dst, pool, counters=counters, idle_timeout=5.0,
                                          note_error=note_error or (lambda message, kind=None: notes.append((message, kind))),
                                          to_destination=to_destination, head_timeout=head_timeout))
    got = bytearray()
    try:
        with contextlib.suppress(OSError):  # the relay may close before taking it all
            start = 0
            for cut in sorted({p % (len(data) + 1) for p in pieces}) + [len(data)]:
                await loop.sock_sendall(app, data[start:cut])
                start = max(start, cut)
            app.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionError):
            while chunk := await loop.sock_recv(app, 65536):
                got += chunk
        await task
    finally:
        app.close()
        if not task.done():
            task.cancel()
    return bytes(got), counters, notes, task


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+: [^\r\n]*")


def response_heads(data: bytes) -> list[tuple[int, dict[bytes, bytes]]]:
    """Every response head at the start of ``data`` up to the first final one (1xx first);
    AssertionError if one is not well-formed HTTP/1.1."""
    heads = []
    while True:
        m = STATUS_LINE.match(data)
        assert m, f"not an HTTP/1.1 response: {data[:120]!r}"
        end = data.find(b"\r\n\r\n")
        assert end >= 0, f"response head never ends: {data[:120]!r}"
        lines = [line for line in data[m.end():end].split(b"\r\n") if line]
        assert all(HEADER_LINE.fullmatch(line) for line in lines), f"bad header line in {data[:200]!r}"
        status = int(m.group(1))
        heads.append((status, {n.lower(): v for n, v in (line.split(b": ", 1) for line in lines)}))
        data = data[end + 4:]
        if status >= 200:
            return heads


def one_line_notes(notes) -> None:
    """Every note is a single line (message and kind)."""
    for message, kind in notes:
        assert "\n" not in message and "\r" not in message
        assert kind is None or "\n" not in kind


# ---- 1. hosts and header values no upstream can carry ----

@pytest.mark.parametrize("proxy", [True, False], ids=["http-proxy", "direct"])
@pytest.mark.parametrize("host", ["exämple.test", "bücher.example:8080", "日本.jp"])
def test_non_ascii_host_gets_400_before_the_pool(host, proxy):
    """A Host with bytes beyond ASCII gets a one-line 400 from the relay (a bad request) and never reaches the pool."""
    data = b"GET /x HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    got, counters, notes, sink, task = run(through_proxy(data, proxy=proxy))
    (status, headers), = response_heads(got)
    body = got.split(b"\r\n\r\n", 1)[1]
    assert status == 400 and body.startswith(b"Atlantic: bad request: ") and body.count(b"\n") == 1
    assert b"not an ASCII host name" in body and b"xn--" in body
    assert counters.bad_requests == 1 and counters.upstream_errors == 0 and not sink.requests
    assert task.exception() is None and notes == []


def test_pool_refuses_a_head_it_cannot_write_in_one_line():
    """The pool itself answers an unsendable head with a one-line LocalProtocolError (an UpstreamError), sending nothing."""

    async def go():
        async with Sink() as sink:
            errors = []
            for url in (f"http://127.0.0.1:{sink.port}", "direct"):
                async with UpstreamPool(url, warm_tunnels=0) as pool:
                    for head in (
                        RequestHead("GET", Endpoint("http", "exämple.test", 80), "/", (("Host", "exämple.test"),)),
                        RequestHead("GET", Endpoint("http", "a.test", 80), "/", (("X-Name", "中文"),)),
                        RequestHead("GET", Endpoint("http", "a.test", 80), "/", (("X-Name", "a\r\nX-Evil: 1"),)),
                        RequestHead("GET", Endpoint("http", "a.test", 80), "/a b", ()),
                        RequestHead("G T", Endpoint("http", "a.test", 80), "/", ()),
                    ):
                        with pytest.raises(LocalProtocolError) as caught:
                            await pool.request(head, None)
                        errors.append(caught.value)
                    for host, port in (("bad host\r\n", 443), ("exämple.test", 443), ("a.test", 0)):
                        with pytest.raises(LocalProtocolError) as caught:
                            await pool.open_tunnel(host, port)
                        errors.append(caught.value)
                    assert pool.counters()["connections_opened"] == 0
            return sink, errors

    sink, errors = run(go())
    assert not sink.requests
    assert all(isinstance(e, UpstreamError) and "\n" not in str(e) and str(e).isascii() for e in errors)


def test_latin1_header_values_travel_byte_exact():
    """A header value's bytes above 0x7f go upstream unchanged on HTTP/1.1 and HTTP/2 (Latin-1 in, Latin-1 out, never UTF-8)."""
    head = RequestHead("GET", Endpoint("http", "a.test", 80), "/p?q=1", (("Host", "a.test"), ("X-Name", "caf\xe9 \xff")))
    wire, _body = request_bytes(head, None, absolute_form=True)
    assert wire.startswith(b"GET http://a.test/p?q=1 HTTP/1.1\r\n")
    assert b"\r\nX-Name: caf\xe9 \xff\r\n" in wire
    assert (b"x-name", b"caf\xe9 \xff") in h2_request_headers(head, None)


# ---- 2. body framing the relay must not trust ----

async def relay_once(data: bytes):
    """``data`` from the application through the relay to the loopback origin (LoopbackPool)."""
    async with Origin() as origin:
        pool = LoopbackPool(origin.port)
        async with app_flow(pool) as (reader, writer, task, counters):
            writer.write(data)
            response = await read_response(reader)
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await asyncio.wait_for(task, 5)
        await pool.aclose()
        return response, rest, counters, pool, origin


def test_transfer_encoding_wins_over_content_length_and_the_connection_closes():
    """TE + CL: the body goes upstream chunked without the Content-Length, and the app's connection closes after the response."""
    data = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    (status, headers, body, _), rest, counters, pool, origin = run(relay_once(data))
    assert status == 200 and headers["connection"] == "close" and rest == b""
    assert len(pool.heads) == 1 and pool.heads[0].body_length is None
    assert all(n.lower() != "content-length" for n, _ in pool.heads[0].headers)
    assert origin.requests[0]["body"] == b"hello"


@pytest.mark.parametrize("lengths", [b"Content-Length: 3\r\nContent-Length: 4\r\n", b"Content-Length: 3, 4\r\n"])
def test_conflicting_content_lengths_get_400(lengths):
    """Content-Length values that disagree get 400 and a close; nothing goes upstream."""
    data = b"POST /echo HTTP/1.1\r\nHost: a\r\n" + lengths + b"\r\nabcd"
    (status, headers, body, _), rest, counters, pool, _ = run(relay_once(data))
    assert status == 400 and headers["connection"] == "close" and not pool.heads
    assert counters.bad_requests == 1


def test_identical_content_lengths_are_one_length():
    """Repeated identical Content-Length values are one length (RFC 9110 §8.6): the request is relayed."""
    data = b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    (status, _, body, _), _, _, pool, origin = run(relay_once(data))
    assert status == 200 and origin.requests[0]["body"] == b"hello" and pool.heads[0].body_length == 5


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity"])
def test_unknown_transfer_coding_gets_501(coding):
    """A transfer coding other than chunked gets 501 Not Implemented and a close; nothing goes upstream."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, counters):
                writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + coding + b"\r\n\r\nxyz")
                line = await reader.readline()
                await reader.read()
                writer.close()
            return line, pool, counters

    line, pool, counters = run(go())
    assert line == b"HTTP/1.1 501 Not Implemented\r\n" and not pool.heads and counters.bad_requests == 1


def test_transfer_encoding_in_http10_request_gets_400():
    """An HTTP/1.0 request with Transfer-Encoding has untrustworthy framing (RFC 9112 §6.1): 400, nothing upstream."""
    data = b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    (status, headers, body, _), rest, counters, pool, _ = run(relay_once(data))
    assert status == 400 and b"HTTP/1.0" in body and not pool.heads and counters.bad_requests == 1


def test_failed_head_request_gets_an_error_head_not_a_reset():
    """A HEAD request the upstream fails gets a 502 head without a body, then a close (never a reset)."""
    from atlantic.pool.errors import UpstreamUnreachableError

    async def go():
        pool = LoopbackPool(1)
        pool.fail_with = UpstreamUnreachableError("proxy p:3128 unreachable")
        async with app_flow(pool) as (reader, writer, task, counters):
            writer.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, body, _ = await read_response(reader, "HEAD")
            rest = await asyncio.wait_for(reader.read(), 10)
        return status, headers, body, rest, counters

    status, headers, body, rest, counters = run(go())
    assert (status, body, rest) == (502, b"", b"") and int(headers["content-length"]) > 0
    assert counters.aborted == 0 and counters.upstream_errors == 1


# ---- 4. failures are one line per kind, never a traceback ----

class BrokenPool(LoopbackPool):
    """A pool with a bug: every request raises a RuntimeError naming the destination."""

    async def request(self, head, body):
        self.heads.append(head)
        raise RuntimeError(f"bug while sending to {head.endpoint.host}")


def test_a_pool_bug_is_one_line_per_kind_never_a_traceback(caplog):
    """Requests meeting the same pool bug for many destinations log one line, no traceback; each app gets a 502."""

    async def go():
        d = Dispatcher(parse_upstream("direct"), lambda port: None, BrokenPool(1), idle_timeout=5.0)
        statuses = []
        for i in range(5):
            data = f"GET / HTTP/1.1\r\nHost: site{i}.test\r\n\r\n".encode()
            got, _, _, task = await exchange(data, d.pool, ("10.0.0.1", 80), note_error=d.note_error)
            statuses.append(response_heads(got)[-1][0])
            assert task.exception() is None
        return d, statuses

    with caplog.at_level(logging.DEBUG, logger="atlantic"):
        d, statuses = run(go())
    assert statuses == [502] * 5
    records = [r for r in caplog.records if r.name.startswith("atlantic")]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert "RuntimeError at test_hostile_http.py" in records[0].getMessage()
    assert len(d.errors) == 1 and "site4.test" in d.counters()["last_error"]["message"]


# ---- 5. fuzz: generated and mutated requests against the real relay and pool ----

def mostly(common: list[bytes], odd: list[bytes], junk_size: int = 0):
    """Usually one of ``common``, sometimes one of ``odd``, now and then random bytes."""
    kinds = [st.sampled_from(common), st.sampled_from(odd), st.binary(max_size=junk_size)]
    return st.sampled_from([0] * 6 + [1] + ([2] if junk_size else [])).flatmap(kinds.__getitem__)


METHODS = mostly([b"GET", b"GET", b"POST", b"HEAD", b"PUT"], [b"OPTIONS", b"CONNECT", b"DELETE", b"TRACE", b"get"], 8)
TARGETS = mostly(
    [b"/", b"/x?a=1", b"/chunked", b"/204", b"http://h.test/x", b"http://h.test:8080/chunked"],
    [b"*", b"http://ex\xc3\xa4mple/", b"https://s.test/", b"a.test:443", b"//x", b"/%00", b"http://[::1]/",
     b"http://u:p@h.test/", b"http://h.test:99999/", b"http://[zz]/", b"/\xff"], 30)
VERSIONS = mostly([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/x", b""])
HOSTS = mostly(
    [b"a.test", b"h.test:8080", b"127.0.0.1", b"[::1]:80", b"ex\xc3\xa4mple.test"],
    [b"\xe6\x97\xa5\xe6\x9c\xac.jp", b"[zz]", b"h.test:\xb2", b".", b"a b", b"h.test:0",
     b"a@b", b"xn--bcher-kva.example", b""], 20)
NAMES = mostly([b"Accept", b"X-A", b"Connection", b"Expect", b"User-Agent"],
               [b"Content-Length", b"Transfer-Encoding", b"Upgrade", b"Proxy-Connection", b"TE", b"Trailer",
                b"Keep-Alive", b"Host", b"Host ", b" Host", b"Proxy-Authorization"], 12)
VALUES = mostly([b"*/*", b"close", b"keep-alive", b"100-continue", b"x"],
                [b"caf\xe9", b"\xff\xfe", b"a\x00b", b"a\rb", b"", b"chunked", b"gzip, chunked", b"websocket", b"h2c",
                 b"5", b"-1", b"99999999999999999999999", b"TE, Host"], 20)
FRAMINGS = mostly([b"none", b"cl", b"chunked"], [b"both", b"cl-short", b"cl-long", b"bad-chunked"])
BODIES = mostly([b"", b"hello", b"x" * 3000], [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], 200)


def framed(framing: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Framing headers and the body bytes for one of FRAMINGS."""
    chunked = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return {
        b"none": (b"", b""),
        b"cl": (b"Content-Length: %d\r\n" % len(body), body),
        b"chunked": (b"Transfer-Encoding: chunked\r\n", chunked),
        b"both": (b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(body), chunked),
        b"cl-short": (b"Content-Length: %d\r\n" % (len(body) + 7), body),
        b"cl-long": (b"Content-Length: %d\r\n" % (len(body) // 2), body),
        b"bad-chunked": (b"Transfer-Encoding: chunked\r\n", b"zz\r\n" + body),
    }.get(framing, (framing + b"\r\n", body))


@st.composite
def requests(draw) -> bytes:
    """A request made of plausible and hostile parts, framed some way, then maybe mutated."""
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS) + b"\r\n"
    headers = b"Host: " + draw(HOSTS) + b"\r\n" if draw(st.integers(0, 9)) < 9 else b""
    headers += b"".join(n + b": " + v + b"\r\n" for n, v in draw(st.lists(st.tuples(NAMES, VALUES), max_size=4)))
    framing, body = framed(draw(FRAMINGS), draw(BODIES))
    data = bytearray(line + headers + framing + b"\r\n" + body)
    mutation = st.tuples(st.sampled_from("fidt"), st.integers(0, 10**4), st.integers(0, 255))
    for op, at, byte in draw(st.one_of(st.just([]), st.just([]), st.lists(mutation, min_size=1, max_size=2))):
        i = at % len(data)
        if op == "f":
            data[i] = byte
        elif op == "i":
            data.insert(i, byte)
        elif op == "d":
            del data[i]
        else:
            del data[i + 1:]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests(), proxy=st.booleans(), pieces=st.lists(st.integers(0, 10**4), max_size=4),
       pipelined=st.booleans())
def test_fuzzed_requests_never_break_the_relay(data, proxy, pieces, pipelined):
    """Any bytes an application sends get a well-formed HTTP/1.1 response or a closed connection; nothing escapes, nothing hangs, no traceback."""
    if pipelined:
        data += b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    loop_errors: list[dict] = []
    handler = logging.Handler(logging.DEBUG)
    logged: list[logging.LogRecord] = []
    handler.emit = logged.append
    logger = logging.getLogger("atlantic")
    logger.addHandler(handler)

    async def go():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
        async with Sink() as sink:
            url = f"http://127.0.0.1:{sink.port}" if proxy else "direct"
            async with UpstreamPool(url, warm_tunnels=0, connect_timeout=2.0, queue_timeout=2.0) as pool:
                return await exchange(data, pool, ("127.0.0.1", sink.port), to_destination=not proxy,
                                      pieces=tuple(pieces))

    try:
        got, counters, notes, task = run(go(), 30.0)
    finally:
        logger.removeHandler(handler)
    assert task.exception() is None
    assert not loop_errors, loop_errors
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in logged), logged
    one_line_notes(notes)
    if got:
        response_heads(got)
        assert b"internal error" not in got, got[:300]
        body = got.split(b"\r\n\r\n", 1)[1]
        if body.startswith(b"Atlantic: "):  # our own replies: one line, then the connection closes
            assert body.count(b"\n") == 1 and body.endswith(b"\n"), body
