"""TLS termination for listed names, on loopback: a real local CA, a real ``direct`` pool,
a real HTTPS origin (its own CA), Python's ssl client and curl as applications.

The NAT lookup sends every flow to the origin's port; the pool reaches the origin by
name (``*.example.test`` resolves to 127.0.0.1 in this process), verifying its certificate
against the origin CA the pool was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl

import pytest
from http1_peers import read_response
from tls_peers import (
    TlsOrigin,
    client_context,
    intercepting,
    issuer_cn,
    origin_pki,
    resolve_test_names,
    tls_get,
    to,
)

TIMEOUT = 20


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


async def until(predicate, steps: int = 500) -> None:
    """Let the loop run until ``predicate()`` holds (bounded)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


@pytest.fixture
def pki(tmp_path, monkeypatch):
    """The origin's PKI, with the test names resolving to loopback."""
    with resolve_test_names(monkeypatch):
        yield origin_pki(tmp_path)


def client_hello(name: str | None, alpn=("http/1.1",)) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A TLS client over memory BIOs (trusting nothing) and its first flight."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing, outgoing.read()


def test_listed_name_is_terminated_and_its_connections_share_one_origin_connection(tmp_path, pki):
    """Three HTTPS connections to a listed name: each sees the local CA's certificate, each
    request reaches the origin over the pool, and all ride one verified origin connection."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, ca_file):
            answers = [await tls_get(port, "www.example.test", ca_file, f"/echo?n={i}") for i in range(3)]
            await until(lambda: d.flows_open == 0)
            for status, _headers, body, cert in answers:
                assert status == 200 and issuer_cn(cert).startswith("Atlantic local CA")
            seen = [json.loads(body) for _, _, body, _ in answers]
            assert [s["target"] for s in seen] == ["/echo?n=0", "/echo?n=1", "/echo?n=2"]
            assert [v for n, v in seen[0]["headers"] if n.lower() == "host"][0].startswith("www.example.test")
            assert origin.connections == 1
            tls = d.counters()["tls"]
            assert (tls["terminated"], tls["http1"], tls["handshake_failures"]) == (3, 3, 0)
            assert tls["origin_connections_opened"] == 1 and tls["origin_connections_reused"] == 2

    run(main())


def test_unlisted_name_is_tunnelled_and_sees_the_origin_certificate(tmp_path, pki):
    """A name not on the list is tunnelled untouched: the application verifies the origin's own certificate."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            status, _, _, cert = await tls_get(port, "other.test", pki.ca_file)
            assert status == 200 and issuer_cn(cert) == "Test Origin CA"
            await until(lambda: d.flows_open == 0)
            assert d.counters()["tls"]["terminated"] == 0 and d.counters()["pool"]["tunnels_cold"] == 1

    run(main())


def test_no_sni_is_tunnelled(tmp_path, pki):
    """A ClientHello without SNI is tunnelled (nothing to mint a certificate for)."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            ctx.check_hostname = False
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
            w.write(b"GET /echo HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
            status, _, _, _ = await read_response(r)
            assert status == 200 and issuer_cn(w.get_extra_info("peercert")) == "Test Origin CA"
            w.close()
            await until(lambda: d.flows_open == 0)
            assert d.counters()["tls"]["terminated"] == 0

    run(main())


def test_ip_literal_sni_is_never_terminated(tmp_path, pki):
    """An SNI that is an address never gets a certificate: the flow stays a tunnel."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, _, _):
            assert d.tls.context_for("127.0.0.1") is None and d.tls.context_for("::1") is None
            assert d.tls.context_for("www.example.test") is not None

    run(main())


def test_fragmented_client_hello_is_reassembled(tmp_path, pki):
    """A ClientHello sent one byte at a time is still terminated and served."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, ca_file):
            ctx = client_context(ca_file)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname="api.example.test")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            for byte in outgoing.read():
                w.write(bytes([byte]))
                await w.drain()
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        w.write(outgoing.read())
                    chunk = await r.read(65536)
                    assert chunk, "the handshake ended early"
                    incoming.write(chunk)
            tls.write(b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
            w.write(outgoing.read())
            data = b""
            while True:
                try:
                    piece = tls.read(65536)
                    if not piece:
                        break
                    data += piece
                    continue
                except ssl.SSLWantReadError:
                    chunk = await r.read(65536)
                    if not chunk:
                        break
                    incoming.write(chunk)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
            w.close()
            assert data.startswith(b"HTTP/1.1 200 ") and b'"/echo"' in data
            assert d.counters()["tls"]["terminated"] == 1

    run(main())


def test_garbage_inside_tls_gets_400(tmp_path, pki):
    """Bytes that are no HTTP request, after a good handshake, get our one-line 400."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, ca_file):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca_file),
                                                 server_hostname="www.example.test")
            w.write(b"\x00\x01 garbage that is not HTTP\r\n\r\n")
            status, _, body, _ = await read_response(r)
            w.close()
            assert status == 400 and body.startswith(b"Atlantic: bad request")
            await until(lambda: d.flows_open == 0)
            assert d.http_counters.bad_requests == 1 and origin.requests == []

    run(main())


def test_app_refusing_our_certificate_makes_its_name_pass_through(tmp_path, pki):
    """An application that does not trust the local CA fails once (alert unknown_ca); the
    name is then passed through, so its next connection is tunnelled to the real origin."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            with pytest.raises(ssl.SSLCertVerificationError):
                await tls_get(port, "pinned.example.test", pki.ca_file)  # trusts the origin CA only
            await until(lambda: d.flows_open == 0)
            tls = d.counters()["tls"]
            assert (tls["handshake_failures"], tls["refused"]) == (1, 1)
            [entry] = tls["pass_through"]
            # asyncio's TLS closes without sending its alert: the quiet refusal
            assert entry["name"] == "pinned.example.test" and entry["reason"] == "closed after our certificate"
            assert 3500 < entry["seconds_left"] <= 3600
            status, _, _, cert = await tls_get(port, "pinned.example.test", pki.ca_file)
            assert status == 200 and issuer_cn(cert) == "Test Origin CA"
            assert d.counters()["tls"]["passed_through"] == 1
            assert any("after seeing Atlantic's certificate" in n.message for n in d.errors.values())

    run(main())


def test_app_closing_after_our_certificate_makes_its_name_pass_through(tmp_path, pki):
    """An application that reads our first flight and hangs up (the quiet refusal) is passed through too."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            _, _, _, hello = client_hello("quiet.example.test")
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(hello)
            assert await r.read(65536)  # our ServerHello and certificate
            w.close()
            await until(lambda: d.flows_open == 0)
            [entry] = d.counters()["tls"]["pass_through"]
            assert entry["name"] == "quiet.example.test" and entry["reason"] == "closed after our certificate"

    run(main())


def test_handshake_timeout_resets_without_pass_through(tmp_path, pki):
    """An application silent after its ClientHello is cut at the handshake deadline; its name is not passed through."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            d.tls.handshake_timeout = 0.3
            _, _, _, hello = client_hello("slow.example.test")
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(hello)
            await r.read(65536)  # our first flight; then we say nothing
            with contextlib.suppress(ConnectionResetError):
                assert await r.read(65536) == b""
            w.close()
            await until(lambda: d.flows_open == 0)
            tls = d.counters()["tls"]
            assert (tls["handshake_failures"], tls["handshake_timeouts"], tls["pass_through"]) == (1, 1, [])
            assert d.tls.context_for("slow.example.test") is not None

    run(main())


def test_origin_certificate_failure_is_a_502_naming_it(tmp_path, pki):
    """A pool that does not trust the origin: the application gets a 502 that says why, one line."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), None) as (d, port, ca_file):
            status, _, body, _ = await tls_get(port, "www.example.test", ca_file)
            assert status == 502 and b"certificate verify failed" in body and body.count(b"\n") == 1
            assert origin.requests == []

    run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_refusing_our_certificate_sends_an_alert_and_is_passed_through(tmp_path, pki):
    """curl trusting only the origin CA refuses our certificate with a TLS alert (unknown_ca):
    the name passes through, and curl's next try reaches the origin with its own certificate."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, _):
            url = f"https://curl.example.test:{origin.port}/echo"
            codes = []
            for _ in range(2):
                proc = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca_file), "-o", "/dev/null",
                    "-w", "%{http_code}", "--connect-to", f"curl.example.test:{origin.port}:127.0.0.1:{port}", url,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
                codes.append((proc.returncode, out.decode()))
            assert codes[0][0] == 60 and codes[1] == (0, "200")  # 60: peer certificate cannot be authenticated
            [entry] = d.counters()["tls"]["pass_through"]
            assert (entry["name"], entry["reason"]) == ("curl.example.test", "refused our certificate")

    run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_curl_through_termination(tmp_path, pki, version):
    """Real curl trusting only the local CA: several requests (HTTP/1.1, or HTTP/2 when the
    h2 relay is installed) are answered by the origin over one pooled origin connection."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, ca_file):
            url = f"https://www.example.test:{origin.port}/echo"  # the authority the NAT says it went to
            for _ in range(2):
                proc = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "--max-time", "10", "--cacert", str(ca_file), version,
                    "--connect-to", f"www.example.test:{origin.port}:127.0.0.1:{port}",
                    "-w", "\\n%{http_version}", url, url,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                *bodies, http_version = out.decode().split("\n")
                assert json.loads(bodies[0])["target"] == "/echo"
            await until(lambda: d.flows_open == 0)
            tls = d.counters()["tls"]
            assert tls["terminated"] == 2 and len(origin.requests) == 4 and origin.connections == 1
            expected = "2" if version == "--http2" and "h2" in d.tls.alpn else "1.1"
            assert http_version == expected and tls["h2" if expected == "2" else "http1"] == 2

    run(main())


def test_upgrade_on_a_terminated_flow_tunnels_tls_to_the_origin(tmp_path, pki):
    """A WebSocket-style Upgrade inside terminated TLS reaches the origin over verified TLS
    inside a tunnel: the 101 and the echoed bytes come back through our TLS."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), pki) as (d, port, ca_file):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca_file),
                                                 server_hostname="ws.example.test")
            w.write(b"GET /ws HTTP/1.1\r\nHost: ws.example.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            w.write(b"hello")
            assert await r.readexactly(10) == b"echo:hello"
            w.close()
            await until(lambda: d.flows_open == 0)
            assert d.http_counters.tunnels == 1 and d.counters()["pool"]["tunnels_cold"] == 1

    run(main())


def test_upgrade_to_an_origin_that_fails_verification_is_a_502(tmp_path, pki):
    """The origin's certificate does not verify (no origin CA configured): the Upgrade gets a one-line 502."""
    async def main():
        async with TlsOrigin(pki) as origin, intercepting(tmp_path, to(origin.port), None) as (d, port, ca_file):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca_file),
                                                 server_hostname="ws.example.test")
            w.write(b"GET /ws HTTP/1.1\r\nHost: ws.example.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            status, _, body, _ = await read_response(r)
            w.close()
            assert status == 502 and b"certificate verify failed" in body

    run(main())
