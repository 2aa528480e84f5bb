"""Flow sniffing: HTTP request lines, TLS ClientHello SNI, everything else; byte by byte."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlantic.forwarder.sniff import (
    MAX_SNIFF_BYTES,
    FlowKind,
    Sniffed,
    classify,
    final_verdict,
    parse_client_hello_sni,
    sniff,
)


@functools.cache
def client_hello(server_hostname: str | None) -> bytes:
    """The first flight of a real Python TLS client (a ClientHello record)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, size: int) -> bytes:
    """Re-frame a ClientHello record's handshake bytes into records of ``size`` bytes."""
    assert hello[0] == 0x16
    body = hello[5:]
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += hello[:3] + len(piece).to_bytes(2, "big") + piece
    return bytes(out)


def verdict_byte_by_byte(data: bytes) -> tuple[Sniffed, int]:
    """Feed prefixes one byte longer each time; the first verdict and how many bytes it took."""
    for n in range(1, len(data) + 1):
        verdict = classify(data[:n])
        if verdict is not None:
            return verdict, n
    return final_verdict(data), len(data)


def test_request_line_decides_http_only_once_complete():
    """A request line is HTTP once its line ends; every shorter prefix is undecided."""
    data = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    verdict, n = verdict_byte_by_byte(data)
    assert verdict.kind is FlowKind.HTTP
    assert n == data.index(b"\n") + 1
    assert verdict.data == data[:n]


@pytest.mark.parametrize(
    "line",
    [
        b"POST http://example.com/x HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"PROPFIND /dav HTTP/1.1\n",
    ],
)
def test_request_line_forms_are_http(line):
    """Absolute-form, asterisk-form, authority-form and bare-LF request lines are HTTP."""
    assert classify(line).kind is FlowKind.HTTP


@pytest.mark.parametrize(
    "data",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior knowledge: the tunnel carries it
        b"GET / HTTP/2.0\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.1 \r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"EHLO example.com\r\n",
        b"G\x00T / HTTP/1.1\r\n",
        b"\x00\x01\x02",
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a handshake record that is no ClientHello
        b"\x16\x05",  # not TLS 1.x
        b"\x17\x03\x03\x00\x10",  # application data first
    ],
)
def test_garbage_and_other_protocols_tunnel(data):
    """Non-HTTP/1.x lines and non-ClientHello bytes tunnel, decided on the first bad byte."""
    verdict, n = verdict_byte_by_byte(data)
    assert verdict.kind is FlowKind.OTHER
    assert verdict.data == data[:n]


def test_pending_request_line_falls_back_to_tunnel_when_silent():
    """An unfinished request line at the deadline tunnels, bytes kept."""
    assert classify(b"GET /a HTTP/1") is None
    assert final_verdict(b"GET /a HTTP/1") == Sniffed(FlowKind.OTHER, b"GET /a HTTP/1")
    assert final_verdict(b"") == Sniffed(FlowKind.OTHER, b"")


def test_overlong_request_line_tunnels():
    """A request line past the bound is not waited for: the tunnel carries it."""
    data = b"GET /" + b"a" * 9000
    assert classify(data).kind is FlowKind.OTHER


@pytest.mark.parametrize("name", ["example.com", "a-b.c_d.example", "xn--bcher-kva.example"])
def test_client_hello_sni_byte_by_byte(name):
    """A real ClientHello yields its SNI exactly when its last byte arrives."""
    hello = client_hello(name)
    verdict, n = verdict_byte_by_byte(hello)
    assert verdict == Sniffed(FlowKind.TLS, hello, name)
    assert n == len(hello)


def test_client_hello_without_sni():
    """A ClientHello for an IP literal (no server_name) is TLS with sni None."""
    hello = client_hello(None)
    assert classify(hello) == Sniffed(FlowKind.TLS, hello, None)


def test_sni_is_lowercased_without_trailing_dot():
    """SNI comes back normalised: lowercase, no trailing dot."""
    hello = client_hello("Example.COM")
    assert classify(hello).sni == "example.com"


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_client_hello_split_across_records(size):
    """A ClientHello fragmented over many TLS records is reassembled, byte by byte."""
    data = split_records(client_hello("split.example"), size)
    verdict, n = verdict_byte_by_byte(data)
    assert verdict.kind is FlowKind.TLS and verdict.sni == "split.example"
    assert n == len(data)


def test_client_hello_with_trailing_bytes():
    """Bytes after a complete ClientHello are kept for the tunnel."""
    hello = client_hello("t.example") + b"\x14\x03\x03\x00\x01\x01"
    verdict = classify(hello)
    assert verdict.sni == "t.example" and verdict.data == hello


def test_truncated_client_hello_body_is_other():
    """A ClientHello whose inner lengths overrun the message is not trusted: tunnel."""
    hello = bytearray(client_hello("x.example"))
    suites = 9 + 2 + 32 + 1 + hello[9 + 2 + 32]  # after the session id
    hello[suites : suites + 2] = b"\xff\xff"  # cipher suites overrun the message
    assert classify(bytes(hello)).kind is FlowKind.OTHER


def test_invalid_sni_name_is_dropped():
    """A server_name with characters no DNS name has is ignored (sni None)."""
    hello = client_hello("good.example")
    bad = hello.replace(b"good.example", b"go d.example")
    assert classify(bad) == Sniffed(FlowKind.TLS, bad, None)


def test_huge_declared_client_hello_is_not_waited_for():
    """A handshake declaring more than the bound tunnels at once."""
    data = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_SNIFF_BYTES * 2).to_bytes(3, "big")
    assert classify(data).kind is FlowKind.OTHER


def test_parse_sni_rejects_truncation():
    """parse_client_hello_sni raises ValueError on a body cut short."""
    hello = client_hello("cut.example")
    with pytest.raises(ValueError):
        parse_client_hello_sni(hello[9:60])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_classify_never_raises_and_keeps_bytes(data):
    """Any bytes get a verdict or None, never an exception; the verdict keeps every byte."""
    verdict = final_verdict(data)
    assert verdict.data == data


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.binary(min_size=1, max_size=4))
def test_corrupted_client_hello_never_raises(offset, junk):
    """A real ClientHello with bytes overwritten anywhere never makes classify raise."""
    hello = bytearray(client_hello("fuzz.example"))
    offset %= len(hello)
    hello[offset : offset + len(junk)] = junk
    assert final_verdict(bytes(hello)).data == bytes(hello)


async def _sniff_pair(send: list[bytes], timeout: float, gap: float = 0.0, close: bool = False) -> Sniffed:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    loop = asyncio.get_running_loop()

    async def writer():
        for piece in send:
            await loop.sock_sendall(b, piece)
            await asyncio.sleep(gap)
        if close:
            b.shutdown(socket.SHUT_WR)

    try:
        task = asyncio.create_task(writer())
        result = await sniff(a, timeout)
        await task
        return result
    finally:
        a.close()
        b.close()


def run(coro, limit: float = 5.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def test_sniff_reassembles_client_hello_over_reads():
    """sniff() keeps reading until a split ClientHello is whole, then names the SNI."""
    hello = client_hello("reads.example")
    pieces = [hello[:3], hello[3:100], hello[100:]]
    verdict = run(_sniff_pair(pieces, timeout=2.0, gap=0.02))
    assert verdict == Sniffed(FlowKind.TLS, hello, "reads.example")


def test_sniff_silent_peer_times_out_to_other():
    """A server-first protocol (client silent) tunnels after the timeout with no bytes."""
    assert run(_sniff_pair([], timeout=0.1)) == Sniffed(FlowKind.OTHER, b"")


def test_sniff_http_first_read():
    """A whole request in the first read is HTTP at once, all bytes handed on."""
    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert run(_sniff_pair([req], timeout=2.0)) == Sniffed(FlowKind.HTTP, req)


def test_sniff_eof_mid_line_is_other():
    """EOF before a request line is complete tunnels what was read."""
    assert run(_sniff_pair([b"GET /x"], timeout=2.0, close=True)) == Sniffed(FlowKind.OTHER, b"GET /x")


# ---- how long the first bytes are waited for, and never losing them (issue 14) ----

import struct  # noqa: E402 - this section was added on its own
import time  # noqa: E402

from atlantic.forwarder.sniff import (  # noqa: E402
    CLIENT_FIRST_PORTS,
    CLIENT_FIRST_TIMEOUT_S,
    DEFAULT_POLICY,
    SNIFF_TIMEOUT_S,
    SniffPolicy,
)

REQUEST = b"GET /100mb HTTP/1.1\r\nHost: origin.test\r\nRange: bytes=0-65535\r\n\r\n"


@pytest.mark.parametrize("port", [80, 443, 8080, 8443, 993])
def test_client_first_ports_wait_the_long_timeout(port):
    """On HTTP and implicit-TLS ports silence means a slow application: the long wait applies."""
    assert port in CLIENT_FIRST_PORTS and DEFAULT_POLICY.is_client_first(port)
    assert DEFAULT_POLICY.timeout_for(port) == CLIENT_FIRST_TIMEOUT_S > SNIFF_TIMEOUT_S


@pytest.mark.parametrize("port", [None, 21, 22, 25, 110, 143, 587, 5432, 6379])
def test_other_ports_keep_the_short_timeout(port):
    """Unknown and server-first ports (SSH, SMTP, FTP...) keep the short wait; so does an unknown port."""
    assert not DEFAULT_POLICY.is_client_first(port)
    assert DEFAULT_POLICY.timeout_for(port) == SNIFF_TIMEOUT_S


def test_policy_is_configurable():
    """A policy with other ports and waits says so for every port."""
    policy = SniffPolicy(client_first_ports=frozenset({8081}), client_first_s=5.0, other_s=0.1)
    assert policy.timeout_for(8081) == 5.0
    assert policy.timeout_for(80) == 0.1


async def _sniff_with(setup, **kw) -> tuple[Sniffed, bytes]:
    """Run ``sniff`` on one end of a socket pair; ``setup(loop, peer)`` drives the other end.
    Returns the verdict and whatever the kernel still held afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        setup(asyncio.get_running_loop(), b)
        verdict = await sniff(a, **kw)
        try:
            left = a.recv(65536)
        except BlockingIOError:
            left = b""
        return verdict, left
    finally:
        a.close()
        b.close()


def test_request_arriving_while_the_loop_is_busy_past_the_deadline_is_http():
    """The request lands while one loop iteration outlasts the deadline: it is read, never dropped."""

    def setup(loop, peer):
        def busy():  # one iteration of a loop carrying a burst: the deadline passes meanwhile
            peer.sendall(REQUEST)
            time.sleep(0.4)

        loop.call_later(0.02, busy)

    verdict, left = run(_sniff_with(setup, timeout=0.1))
    assert verdict == Sniffed(FlowKind.HTTP, REQUEST)
    assert left == b""


def test_bytes_already_in_the_kernel_at_the_deadline_decide():
    """A deadline already past still reads once: bytes in the kernel are never called silence."""
    verdict, _ = run(_sniff_with(lambda loop, peer: peer.sendall(REQUEST), timeout=0.0))
    assert verdict == Sniffed(FlowKind.HTTP, REQUEST)


def test_request_sent_just_before_a_late_deadline_is_http():
    """The loop runs late: the request and the deadline fall due in one iteration, the
    request first. The bytes are in the kernel when the deadline fires: HTTP, not silence."""

    def setup(loop, peer):
        loop.call_later(0.01, time.sleep, 0.3)  # the loop is late for everything below
        loop.call_later(0.05, peer.sendall, REQUEST)  # due before the deadline, run in its iteration

    verdict, left = run(_sniff_with(setup, timeout=0.1))
    assert verdict == Sniffed(FlowKind.HTTP, REQUEST)
    assert left == b""


def test_client_hello_in_the_kernel_at_the_deadline_is_tls():
    """The last read at the deadline also finds a whole ClientHello and its SNI."""
    hello = client_hello("late.example")
    verdict, _ = run(_sniff_with(lambda loop, peer: peer.sendall(hello), timeout=0.0))
    assert verdict == Sniffed(FlowKind.TLS, hello, "late.example")


def test_cancelled_sniff_leaves_the_bytes_in_the_kernel():
    """Cancelling sniff in the very iteration its bytes arrive loses none of them."""

    async def go():
        a, b = socket.socketpair()
        a.setblocking(False)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sniff(a, timeout=5.0))

        def arrive():
            b.sendall(REQUEST)
            time.sleep(0.1)  # the loop is late: readiness and the cancel below come together

        loop.call_later(0.02, arrive)
        loop.call_later(0.05, task.cancel)
        try:
            with pytest.raises(asyncio.CancelledError):
                await task
            return a.recv(65536)
        finally:
            a.close()
            b.close()

    assert run(go()) == REQUEST


def test_slow_request_on_a_client_first_port_is_http():
    """A request sent after the short wait has long passed is still HTTP on port 80."""
    policy = SniffPolicy(client_first_s=4.0, other_s=0.05)

    def setup(loop, peer):
        loop.call_later(0.5, peer.sendall, REQUEST)

    verdict, _ = run(_sniff_with(setup, port=80, policy=policy))
    assert verdict == Sniffed(FlowKind.HTTP, REQUEST)


def test_silence_on_a_server_first_port_tunnels_with_the_short_wait():
    """Silence on port 22 ends in OTHER with no bytes (an SSH greeting is not held back)."""
    policy = SniffPolicy(client_first_s=60.0, other_s=0.05)
    verdict, _ = run(_sniff_with(lambda loop, peer: None, port=22, policy=policy))
    assert verdict == Sniffed(FlowKind.OTHER, b"")


def test_eof_on_a_client_first_port_ends_at_once():
    """EOF ends the wait on a client-first port too: what was read tunnels, no long wait."""

    def setup(loop, peer):
        peer.sendall(b"GET /x")
        peer.shutdown(socket.SHUT_WR)

    verdict, _ = run(_sniff_with(setup, port=80, policy=SniffPolicy(client_first_s=60.0)))
    assert verdict == Sniffed(FlowKind.OTHER, b"GET /x")


def test_reset_connection_propagates():
    """A connection reset before any byte is an error for the caller, not a verdict."""

    async def go():
        srv = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        a.setblocking(False)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # SO_LINGER 0: an RST
        try:
            with pytest.raises(ConnectionResetError):
                await sniff(a, port=80, policy=SniffPolicy(client_first_s=60.0))
        finally:
            a.close()
            srv.close()

    run(go())
