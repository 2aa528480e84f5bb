"""TLS termination for listed domains: the application's HTTPS rides the pool like HTTP.

Async adapter between the dispatcher and the request relays. For a TLS flow whose SNI
the :class:`~.intercept.InterceptPolicy` lists (and has not marked pass-through), the
dispatcher asks :meth:`TlsTerminator.context_for` for the local CA's server context for
that name; with one, :meth:`TlsTerminator.serve` completes the handshake (the ClientHello
sniffing read goes in first, within ``handshake_timeout``), then serves the decrypted
flow: ALPN ``h2`` with the HTTP/2 relay (``h2serve.serve_h2``),
``http/1.1`` or no ALPN with the HTTP/1.1 relay, every request sent to
``Endpoint("https", sni, port)`` over the pool's verified origin TLS connections.

Unlisted names, flows without SNI and IP literals never get here: they are tunnelled
exactly as before, and so is a listed name outside the CA's constraints (one line
saying so). A failed handshake is counted; when it looks like the application refusing
our certificate (pinning), its name passes through untouched for a while (see
``intercept``), so its next connection works. Failures are one line per kind through
``note_error`` (which logs each kind at most once a minute).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from atlantic.forwarder.appconn import HANDSHAKE_TIMEOUT_S, TlsConn, TlsHandshakeError
from atlantic.forwarder.h2serve import serve_h2
from atlantic.forwarder.http1 import HEAD_TIMEOUT_S, HttpCounters, NoteError, serve_http
from atlantic.forwarder.intercept import InterceptPolicy
from atlantic.forwarder.tlstunnel import open_tls_tunnel, tunnel_tls_context
from atlantic.pool.api import ByteStream, Endpoint, Pool

__all__ = ["TlsCounters", "TlsTerminator"]


@dataclass(slots=True)
class TlsCounters:
    """Counters of TLS termination (mutable, no lock: one loop)."""

    terminated: int = 0  # handshakes completed: the flow's requests ride the pool
    h2: int = 0  # of which ALPN h2
    http1: int = 0  # of which HTTP/1.1 (or no ALPN)
    handshake_failures: int = 0
    handshake_timeouts: int = 0  # of the failures: no complete handshake in time
    refused: int = 0  # of the failures: the application refused our certificate (-> pass-through)
    passed_through: int = 0  # listed flows tunnelled untouched because their name passes through
    outside_ca: int = 0  # listed flows the CA may not sign for: tunnelled


class TlsTerminator:
    """Terminates the application's TLS for listed names with the local CA (see the module docstring)."""

    def __init__(self, ca, policy: InterceptPolicy, pool: Pool, *, note_error: NoteError,
                 http_counters: HttpCounters | None = None, idle_timeout: float = 120.0,
                 head_timeout: float = HEAD_TIMEOUT_S, handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 http2: bool = True, origin_ca_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        """``ca``: a loaded ``localca.LocalCA`` (``server_context_for(name, now, alpn)``,
        ``permits(name)``); ``http2``: offer ALPN h2 (served by ``h2serve``) besides http/1.1;
        ``origin_ca_file``: a CA trusted for origins
        besides the system's (for WebSocket tunnels; the pool has its own); ``clock``
        (monotonic) for the pass-through memory, ``wall`` (UTC) for minting certificates."""
        self.ca = ca
        self.policy = policy
        self.pool = pool
        self.note_error = note_error
        self.http_counters = http_counters if http_counters is not None else HttpCounters()
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.handshake_timeout = handshake_timeout
        self.alpn = ("h2", "http/1.1") if http2 else ("http/1.1",)
        self.clock = clock
        self.wall = wall
        self.counters = TlsCounters()
        self.origin_ca_file = origin_ca_file
        self._tunnel_tls: ssl.SSLContext | None = None  # made at the first Upgrade

    async def _open_tls_tunnel(self, host: str, port: int) -> ByteStream:
        """A verified TLS tunnel to the origin, for an Upgrade (WebSocket) on a terminated flow."""
        if self._tunnel_tls is None:
            self._tunnel_tls = tunnel_tls_context(self.origin_ca_file)
        return await open_tls_tunnel(self.pool, host, port, self._tunnel_tls)

    def context_for(self, sni: str | None) -> ssl.SSLContext | None:
        """The server context to terminate a flow to ``sni`` with, or None: tunnel it as before
        (unlisted, no SNI, an address, passing through, or a name the CA may not sign)."""
        policy = self.policy
        if not policy.matches(sni):
            return None
        if not policy.should_terminate(sni, self.clock()):
            self.counters.passed_through += 1
            return None
        try:
            return self.ca.server_context_for(sni, self.wall(), alpn=self.alpn)
        except (ValueError, ssl.SSLError, OSError) as exc:
            self.counters.outside_ca += 1
            self.note_error(f"TLS for {sni} is tunnelled, not terminated: {exc}",
                            "tls: no certificate for a listed name")
            return None

    async def serve(self, sock: socket.socket, context: ssl.SSLContext, first_bytes: bytes, sni: str,
                    port: int) -> None:
        """Terminate TLS on ``sock`` (``first_bytes``: the ClientHello already read) and serve
        its requests to https://``sni``:``port``; the socket is closed on return."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn = TlsConn(sock, context, first_bytes)
        try:
            await conn.handshake(self.handshake_timeout)
        except TlsHandshakeError as exc:
            self._handshake_failed(sni, exc)
            if exc.kind == "timeout":
                conn.abort()
            else:
                sock.close()  # it closed (or was told why in an alert)
            return
        except BaseException:
            conn.abort()
            raise
        counters = self.counters
        counters.terminated += 1
        dst = (sni, port)
        if conn.alpn == "h2":
            counters.h2 += 1
            try:
                await serve_h2(conn, dst, self.pool, counters=self.http_counters,
                                    idle_timeout=self.idle_timeout, note_error=self.note_error)
            finally:
                await conn.aclose("close")  # a no-op when the relay closed it already
            return
        counters.http1 += 1
        await serve_http(conn, b"", dst, self.pool, counters=self.http_counters, idle_timeout=self.idle_timeout,
                         note_error=self.note_error, head_timeout=self.head_timeout,
                         origin=Endpoint("https", sni, port), open_tunnel=self._open_tls_tunnel)

    def _handshake_failed(self, sni: str, exc: TlsHandshakeError) -> None:
        counters = self.counters
        counters.handshake_failures += 1
        if exc.kind == "timeout":
            counters.handshake_timeouts += 1
        message = f"TLS termination for {sni}: {exc}"
        if exc.refused:
            counters.refused += 1
            self.policy.mark_pass_through(sni, exc.kind, self.clock())
            message += (f"; its connections pass through untouched for {self.policy.pass_through_s / 60:g} min "
                        "(pinned, or the local CA is not trusted there: see `atlantic ca`)")
        self.note_error(message, f"tls handshake: {exc.kind}")

    def status(self) -> dict:
        """The ``tls`` block of ``status``: the list, counters, names passing through, the CA."""
        report = {"intercept": list(self.policy.patterns), **asdict(self.counters),
                  "pass_through": self.policy.pass_through(self.clock()),
                  "alpn": list(self.alpn)}
        try:
            pool = self.pool.counters()
        except Exception:  # noqa: BLE001 - status must never fail for want of pool counters
            pool = {}
        report["origin_connections_opened"] = pool.get("origin_tls_opened", 0)
        report["origin_connections_reused"] = pool.get("origin_tls_reused", 0)
        ca = self.ca
        report["ca"] = {"domains": list(ca.domains), "leaves_minted": ca.minted,
                        "not_after": ca.not_after.isoformat()}
        return report

