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
    loop_start = None

    async def go():
        nonlocal loop_start
        loop_start = asyncio.get_running_loop().time()
        v = await _sniff_pair([], timeout=0.1)
        return v, asyncio.get_running_loop().time() - loop_start

    verdict, elapsed = run(go())
    assert verdict == Sniffed(FlowKind.OTHER, b"")
    assert elapsed < 2.0


def test_sniff_http_first_read():
    """A whole request in the first read is HTTP at once, all bytes handed on."""
    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert run(_sniff_pair([req], timeout=2.0)) == Sniffed(FlowKind.HTTP, req)


def test_sniff_eof_mid_line_is_other():
    """EOF before a request line is complete tunnels what was read."""
    assert run(_sniff_pair([b"GET /x"], timeout=2.0, close=True)) == Sniffed(FlowKind.OTHER, b"GET /x")
