"""Active probes through one upstream, and exit verification: async adapters.

A probe opens a connection of its own to the proxy (a pooled one could hide a proxy that
no longer accepts new connections), with the daemon's mark and the credentials of the
current session, and either sends ``GET <url>`` in absolute form (an ``http://`` probe
URL) or ``CONNECT host:port`` (an ``https://`` one: the proxy's answer is what is
probed). The verdict: the expected status, or a one-line reason. The echo check is a
GET of an ``http://`` echo URL through the same session that returns JSON with the
address the origin saw (``ip``, or ``origin`` as httpbin names it) and, where the
service gives one, the country.

Every error is caught and becomes a result: a probe never raises into the monitor.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from atlantic.pool.errors import UpstreamError
from atlantic.pool.proxyurl import ProxySnapshot
from atlantic.pool.transport import open_transport
from atlantic.pool.upstream import UpstreamKind

__all__ = ["EchoResult", "ProbeResult", "echo", "probe", "probe_tls_context"]

MAX_BODY = 64 * 1024  # an echo answer is a few hundred bytes


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: ``ok``, its latency when it got an answer, or why it failed (one line).

    ``status``/``headers`` are the proxy's answer when there was one, so a failure can be
    told apart (a provider's error header, a 407). ``reached_proxy``: the connection to the
    proxy (and its TLS) was made, so a timeout after it is the probe URL's silence as much
    as the proxy's."""

    ok: bool
    latency_s: float | None
    reason: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    reached_proxy: bool = False


@dataclass(frozen=True, slots=True)
class EchoResult:
    """What the echo service saw: the exit address (and country), or why it failed."""

    ip: str | None
    country: str | None
    error: str | None = None


def probe_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS to an https proxy for probes: HTTP/1.1 only (a probe is one request)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _request_bytes(snap: ProxySnapshot, url: str) -> tuple[bytes, bool]:
    """The request to send for ``url`` and whether it is a CONNECT."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"probe URL {url!r} must be http:// or https:// with a host")
    auth = f"Proxy-Authorization: {snap.proxy_authorization}\r\n" if snap.proxy_authorization else ""
    if parts.scheme == "https":
        authority = f"{parts.hostname}:{parts.port or 443}"
        return (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n").encode(), True
    host = parts.netloc.rpartition("@")[2]
    target = url if not parts.username else url.replace(parts.netloc, host, 1)
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}User-Agent: atlantic-probe\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode(), False


async def _exchange(snap: ProxySnapshot, url: str, *, mark: int | None, timeout: float,
                    addresses: Mapping[str, str], tls: ssl.SSLContext | None,
                    clock: Callable[[], float], reached: list[bool] | None = None,
                    ) -> tuple[int, tuple[tuple[str, str], ...], bytes, float]:
    """Send the probe request; (status, headers, body, seconds to the head). ``reached``
    gets True appended once the proxy's connection is made."""
    up = snap.upstream
    request, is_connect = _request_bytes(snap, url)
    started = clock()
    t = await open_transport(addresses.get(up.host, up.host), up.port, now=started, mark=mark,
                             tls=tls if up.kind is UpstreamKind.HTTPS else None, server_hostname=up.host,
                             timeout=timeout, what=f"proxy {up.redacted()}")
    if reached is not None:
        reached.append(True)
    try:
        t.write(request)
        await t.drain()
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="CONNECT" if is_connect else "GET", target="x", headers=[("Host", "x")]))
        status, headers, body, head_at = 0, (), bytearray(), 0.0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await t.read(65536))
                continue
            if isinstance(event, h11.Response):
                status, head_at = event.status_code, clock() - started
                headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
                if is_connect:
                    return status, headers, b"", head_at
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    break
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return status, headers, bytes(body), head_at
    finally:
        t.abort()


async def probe(snap: ProxySnapshot, url: str, *, expected_status: int = 200, mark: int | None = None,
                timeout: float = 5.0, addresses: Mapping[str, str] | None = None,
                tls: ssl.SSLContext | None = None,
                clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """Probe the upstream of ``snap`` with ``url``; never raises."""
    where = f"probe {url} via {snap.upstream.redacted()}"
    reached: list[bool] = []
    try:
        async with asyncio.timeout(timeout):
            status, headers, _body, latency = await _exchange(
                snap, url, mark=mark, timeout=timeout, addresses=addresses or {}, tls=tls, clock=clock,
                reached=reached)
    except TimeoutError:
        return ProbeResult(False, None, f"{where}: no answer within {timeout:g} s", reached_proxy=bool(reached))
    except UpstreamError as exc:
        return ProbeResult(False, None, str(exc))
    except (OSError, h11.ProtocolError, ValueError, ssl.SSLError) as exc:
        return ProbeResult(False, None, f"{where}: {type(exc).__name__}: {str(exc)[:120]}")
    ok = status == expected_status or (url.startswith("https:") and 200 <= status < 300)
    reason = f"{status} in {latency * 1000:.0f} ms" if ok else f"{where}: status {status}, expected {expected_status}"
    return ProbeResult(ok, latency, reason, status, headers, reached_proxy=True)


async def echo(snap: ProxySnapshot, url: str, *, mark: int | None = None, timeout: float = 5.0,
               addresses: Mapping[str, str] | None = None, tls: ssl.SSLContext | None = None) -> EchoResult:
    """Ask the echo service at ``url`` (http://) which address it saw; never raises."""
    if not url.startswith("http://"):
        return EchoResult(None, None, f"echo URL {url!r} must be http:// (the answer is read through the proxy)")
    try:
        async with asyncio.timeout(timeout):
            status, _headers, body, _ = await _exchange(snap, url, mark=mark, timeout=timeout,
                                                        addresses=addresses or {}, tls=tls, clock=time.monotonic)
    except TimeoutError:
        return EchoResult(None, None, f"echo {url}: no answer within {timeout:g} s")
    except UpstreamError as exc:
        return EchoResult(None, None, str(exc))
    except (OSError, h11.ProtocolError, ValueError, ssl.SSLError) as exc:
        return EchoResult(None, None, f"echo {url}: {type(exc).__name__}: {str(exc)[:120]}")
    if status != 200:
        return EchoResult(None, None, f"echo {url}: status {status}")
    return parse_echo(body)


def parse_echo(body: bytes) -> EchoResult:
    """The exit address and country from an echo service's JSON (pure; never raises)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return EchoResult(None, None, f"echo answer is not JSON: {body[:40]!r}")
    if not isinstance(data, dict):
        return EchoResult(None, None, "echo answer is not a JSON object")
    raw = data.get("ip", data.get("origin", data.get("query")))  # ours/ipify, httpbin, ip-api
    ip = raw.split(",")[0].strip() if isinstance(raw, str) else None
    try:
        ip = str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        ip = None
    if ip is None:
        return EchoResult(None, None, "echo answer has no valid ip")
    country = data.get("country", data.get("country_code", data.get("countryCode")))
    if isinstance(country, dict):  # e.g. {"code": "DE", ...}
        country = country.get("code")
    country = country.strip().lower()[:8] if isinstance(country, str) and country.strip().isalpha() else None
    return EchoResult(ip, country)
