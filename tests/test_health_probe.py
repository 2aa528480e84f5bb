"""Active probes and exit verification against small real proxies on loopback: a GET in
absolute form with the session's credentials, CONNECT for https:// probe URLs, the
expected status, refused and silent proxies, and echo answers good and garbage."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest

from atlantic.health.probe import parse_echo, probe, echo
from atlantic.pool.proxyurl import ProxyConfig, ProxyURLCache


class ScriptedProxy:
    """Answers one request per connection: checks Basic auth, then the scripted answer."""

    def __init__(self, status=200, body=b'{"ip": "203.0.113.7", "country": "DE"}', headers=(), silent=False):
        self.status, self.body, self.headers, self.silent = status, body, headers, silent
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.silent:
                await asyncio.sleep(10)
                return
            expected = "Basic " + base64.b64encode(b"u:pw").decode()
            if f"Proxy-Authorization: {expected}".encode() not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            else:
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
                writer.write(f"HTTP/1.1 {self.status} X\r\n{extra}Content-Length: {len(self.body)}\r\n\r\n".encode()
                             + self.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def snap(port: int, password: str = "pw"):
    return ProxyURLCache(ProxyConfig(f"http://u:{password}@127.0.0.1:{port}"), 0.0, lambda: "s1").current


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_probe_sends_an_authenticated_get_and_sees_the_expected_status():
    """GET http://... in absolute form with Proxy-Authorization; 200 is ok with a latency."""
    async def main():
        async with ScriptedProxy() as p:
            r = await probe(snap(p.port), "http://probe.test/generate_204", expected_status=200)
            return r, p.requests
    r, requests = run(main())
    assert r.ok and r.latency_s is not None and r.status == 200
    assert requests[0].startswith(b"GET http://probe.test/generate_204 HTTP/1.1\r\n")


def test_probe_with_an_https_url_is_a_connect():
    """An https:// probe URL is probed with CONNECT host:443; a 2xx answer is ok."""
    async def main():
        async with ScriptedProxy(body=b"") as p:
            r = await probe(snap(p.port), "https://probe.test/")
            return r, p.requests
    r, requests = run(main())
    assert r.ok and requests[0].startswith(b"CONNECT probe.test:443 HTTP/1.1\r\n")


@pytest.mark.parametrize("kwargs, password, expect", [
    ({"status": 503, "headers": [("x-brd-err-code", "server_10000")]}, "pw", "status 503"),
    ({}, "wrong", "status 407"),
])
def test_probe_failures_are_one_line_reasons_with_the_answer(kwargs, password, expect):
    """A wrong status fails the probe; the proxy's status and headers come back for the monitor."""
    async def main():
        async with ScriptedProxy(**kwargs) as p:
            return await probe(snap(p.port, password), "http://probe.test/")
    r = run(main())
    assert not r.ok and expect in r.reason and "\n" not in r.reason
    assert "wrong" not in r.reason and "pw" not in r.reason.replace("probe", "")


def test_probe_of_a_refused_port_fails_without_raising():
    """Nobody listening: a failed probe naming the proxy, not an exception."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run(probe(snap(port), "http://probe.test/"))
    assert not r.ok and f"127.0.0.1:{port}" in r.reason


def test_probe_of_a_silent_proxy_times_out():
    """A proxy that accepts and never answers fails the probe at the timeout."""
    async def main():
        async with ScriptedProxy(silent=True) as p:
            return await probe(snap(p.port), "http://probe.test/", timeout=0.5)
    r = run(main())
    assert not r.ok and "no answer" in r.reason


def test_echo_reads_the_exit_address_and_country():
    """The echo service's JSON gives the exit address and its country, lowercased."""
    async def main():
        async with ScriptedProxy() as p:
            return await echo(snap(p.port), "http://echo.test/ip")
    r = run(main())
    assert (r.ip, r.country, r.error) == ("203.0.113.7", "de", None)


@pytest.mark.parametrize("body, error", [
    (b"<html>nope</html>", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"ip": "999.1.1.1"}', "no valid ip"),
    (b'{"ip": {"deep": 1}}', "no valid ip"),
    (b"[" * 50000, "not JSON"),
])
def test_garbage_from_the_echo_service_is_a_clear_error(body, error):
    """Whatever the echo service returns, the result is an address or a one-line error."""
    r = parse_echo(body)
    assert r.ip is None and error in r.error


def test_echo_accepts_httpbin_style_and_country_objects():
    """`origin` (httpbin) and {"country": {"code": ...}} are understood."""
    assert parse_echo(json.dumps({"origin": "198.51.100.4, 10.0.0.1"}).encode()).ip == "198.51.100.4"
    assert parse_echo(json.dumps({"ip": "::1", "country": {"code": "US"}}).encode()).country == "us"
