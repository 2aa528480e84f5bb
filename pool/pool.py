"""The shared upstream pool: the async adapter around :class:`~atlantic.pool.plan.PoolPlan`.

Every request enqueues a waiter, one synchronous assignment pass places it (reuse the
most recently used connection, else open one under the per-key limit, else wait), and
the request goes out on that connection: HTTP/1.1 keep-alive (pool/h1wire.py) to a proxy or origin,
or a stream on an HTTP/2 proxy connection (h2). ``https`` requests go on pooled TLS
connections to the origin inside a tunnel (:mod:`.origin_tls`), h1 or h2 as the origin's
ALPN says, keyed per (proxy key, origin). Tunnels ride CONNECT streams (h2) or
consume a warm HTTP/1.1 proxy connection. With ``plain_http="tunnel"``, ``http`` requests
through an HTTP/1.1 proxy go the same way without TLS: origin-form requests in a kept
CONNECT tunnel per origin, so the proxy relays bytes instead of parsing every request
(bulk bodies splice end to end); a proxy that refuses CONNECT to a port gets that port's
requests as proxy requests (absolute-form) from then on. The clock is injected (``clock``) and only
read here, never in the core. Connection life (plan records and live objects) is the
:class:`~atlantic.pool.conns.ConnectionSet`'s.

Every task (background loops, connection openers, connection closes) belongs to the
TaskGroups of :class:`~atlantic.pool.background.PoolTasks`; ``aclose`` is bounded (~2 s).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial

from atlantic.pool.connect import ConnectResponse, format_authority, raise_for_status
from atlantic.pool.errors import (
    RemoteProtocolError, UpstreamAuthError, UpstreamError, UpstreamStatusError, UpstreamTargetError,
    UpstreamTimeoutError,
)
from atlantic.pool.upstream import UpstreamKind
from atlantic.pool.api import ByteStream, Endpoint, RequestHead
from atlantic.pool.background import PoolTasks, expire_loop, refresh_loop, warm_loop
from atlantic.pool.conns import Connection, ConnectionSet
from atlantic.pool.counters import Counters
from atlantic.pool.exchange import (
    H2ResponseStream, auth_error, h2_connect_headers, h2_request_headers, h2_response_head,
)
from atlantic.pool.h2conn import H2Connection, H2Event, H2Stream
from atlantic.pool.http11 import ConnectionLost, H1Connection, H1ResponseStream, check_host, check_request
from atlantic.pool.origin_tls import (
    SessionCache, http_origin_key, is_http_origin_key, is_origin_key, open_origin_tls, origin_address,
    origin_key, origin_tls_context,
)
from atlantic.pool.plan import ConnRecord, PoolKey, PoolPlan
from atlantic.pool.proxyurl import ProxyConfig, ProxySnapshot, ProxyURLCache, proxy_key
from atlantic.pool.tlsstream import TLSStream
from atlantic.pool.transport import SocketStream, Transport, open_transport, proxy_tls_context
from atlantic.pool.tunnel import WarmSet, connect_over, connect_request

__all__ = ["UpstreamPool"]

log = logging.getLogger("atlantic.pool")

_MAX_ATTEMPTS = 4  # stale reused connections skipped + one retry, per request
_CLOSE_TIMEOUT_S = 2.0  # aclose: closes that take longer are cut
_KEYS_KEPT = 4096  # per-key memory (snapshot, ALPN hints) beyond this is dropped for keys not in use


class UpstreamPool:
    """Warm shared connections to one upstream (``direct``, ``http://``, ``https://``).

    ``proxy``: a URL, a :class:`ProxyConfig` or a :class:`ProxyURLCache` (shared with
    whoever rotates it). ``mark``: SO_MARK for every socket. ``warm_tunnels``: ready
    HTTP/1.1 proxy connections kept for CONNECT (0 disables). ``ca_file``: extra CA for
    the proxy's certificate; ``origin_ca_file``: a CA trusted for origins (``https``
    requests) besides the system store. ``plain_http``: ``forward`` (``http`` requests
    in absolute-form on shared proxy connections) or ``tunnel`` (in a kept CONNECT tunnel
    per origin, through HTTP/1.1 proxies). Use as ``async with`` or
    call :meth:`start` / :meth:`aclose`; a closed pool refuses new work.
    """

    def __init__(self, proxy: str | ProxyConfig | ProxyURLCache, *, mark: int | None = None,
                 ca_file: str | None = None, origin_ca_file: str | None = None,
                 connect_timeout: float = 10.0, queue_timeout: float = 60.0, idle_timeout: float = 90.0, max_per_key: int = 128,
                 max_total: int = 256, warm_tunnels: int = 2, ping_interval: float = 20.0,
                 ping_timeout: float = 10.0, early_connect_data: bool = False, plain_http: str = "forward",
                 clock: Callable[[], float] = time.monotonic,
                 new_session: Callable[[], str] = lambda: secrets.token_hex(4),
                 addresses: Mapping[str, str] | None = None) -> None:
        self.clock = clock
        # Proxy host name -> address resolved before capture began: the daemon's own
        # lookups would otherwise be captured too. TLS still verifies the name.
        self.addresses = dict(addresses or {})
        if isinstance(proxy, str):
            proxy = ProxyConfig(proxy)
        if isinstance(proxy, ProxyConfig):
            proxy = ProxyURLCache(proxy, clock(), new_session)
        self.proxy = proxy
        self.mark, self.connect_timeout, self.queue_timeout = mark, connect_timeout, queue_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.early_connect_data = early_connect_data
        if plain_http not in ("forward", "tunnel"):
            raise ValueError(f"plain_http must be 'forward' or 'tunnel', not {plain_http!r}")
        self.plain_http = plain_http
        self._no_tunnel: set[tuple[str, int]] = set()  # (proxy, port) whose CONNECTs were refused
        self.plan = PoolPlan(max_per_key=max_per_key, max_total=max_total, idle_timeout=idle_timeout)
        self.conns = ConnectionSet(self.plan, self._close_later)
        self.stats = Counters()
        self.warm = WarmSet(warm_tunnels)
        self._tls = proxy_tls_context(ca_file) if proxy.current.upstream.kind is UpstreamKind.HTTPS else None
        self._origin_ca_file = origin_ca_file
        self._origin_tls: ssl.SSLContext | None = None  # made at the first https request
        self.sessions = SessionCache()  # TLS sessions to resume, per origin key
        self._futs: dict[object, asyncio.Future] = {}
        self._snaps: dict[PoolKey, ProxySnapshot] = {}
        self._h1_keys: set[PoolKey] = set()  # https proxies / origins that chose http/1.1 by ALPN
        self._warm_wanted = asyncio.Event()
        self._last_tunnel = -1e18
        self._closing = False
        self._tasks = PoolTasks((
            ("idle expiry", partial(expire_loop, self.conns, self.warm, self.proxy, clock)),
            ("proxy URL refresh", partial(refresh_loop, self.proxy, clock, self._warm_wanted)),
            ("warm connections", partial(warm_loop, self._warm_wanted, self.warm,
                                         self._warm_target, self._open_warm))))

    # ---- life ----
    async def start(self) -> None:
        """Start the background tasks: expiry, proxy URL refresh, warm connections."""
        await self._ensure_started()

    async def _ensure_started(self) -> None:
        if self._closing:
            raise UpstreamError(f"{self.proxy.current.upstream}: the pool is closed")
        await self._tasks.start()

    async def __aenter__(self) -> UpstreamPool:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and stop the background tasks (bounded: ~2 s).

        Requests still waiting for a connection fail with ``UpstreamError``.
        """
        self._closing = True
        for fut in self._futs.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"{self.proxy.current.upstream}: the pool is closed"))
        self.warm.close_all()
        for conn in self.conns.close_all():
            self._close_later(conn)
        await self._tasks.aclose(_CLOSE_TIMEOUT_S)

    def drain(self) -> None:
        """New flows go elsewhere now (another upstream took over), or the network path
        changed: close the idle and warm connections (origin TLS ones too); requests and
        tunnels under way finish on theirs."""
        self.warm.close_all()
        self.conns.drop_idle()

    def _close_later(self, conn: Connection) -> None:
        """Close ``conn`` in the pool's close group (at once if no task can run any more)."""
        if not self._tasks.spawn_close(conn.aclose, "closing a connection"):
            conn.transport.abort()

    def counters(self) -> dict:
        """Counters (requests, connections_opened, reused, h2_streams, ...) and TTFB p50/95/99."""
        self.stats.connections_open = len(self.conns)
        return self.stats.snapshot()

    def __repr__(self) -> str:
        return repr(self.plan)

    # ---- requests ----
    async def request(self, head: RequestHead,
                      body: AsyncIterator[bytes] | None) -> H1ResponseStream | H2ResponseStream:
        """Send one request; return once the response head is in (see ``api.Pool.request``)."""
        check_request(head)  # LocalProtocolError before any connection is taken
        await self._ensure_started()
        snap = self.proxy.current
        self.stats.requests += 1
        retried = False
        for _ in range(_MAX_ATTEMPTS):
            key = self._key_for(snap, head.endpoint)
            rec, conn, reused = await self._acquire(key, snap)
            if conn is None:
                continue  # closed between placement and use
            if isinstance(conn, H1Connection) and reused and conn.is_peer_closed():
                self.conns.drop(rec)  # closed while idle: not a retry, nothing was sent
                continue
            if reused:
                self.stats.reused += 1
                self.stats.origin_tls_reused += is_origin_key(key)
            # a request written behind its tunnel's CONNECT: a warm proxy connection closed just
            # then may be retried as a reused one would
            behind_connect = isinstance(conn, H1Connection) and conn.connect_answer is not None
            sent_at = self.clock()
            try:
                if isinstance(conn, H2Connection):
                    resp = await self._h2_request(rec, conn, head, body, snap)
                else:
                    resp = await self._h1_request(rec, conn, head, body, snap)
            except ConnectionLost as e:
                if (e.retryable and (reused or behind_connect) and not retried and head.is_idempotent
                        and body is None):
                    retried = True
                    self.stats.retries += 1
                    continue
                raise RemoteProtocolError(str(e)) from None
            except UpstreamStatusError as e:
                # the tunnel's CONNECT refused or not understood (403, 405, 501...): the proxy's
                # policy, not the credentials' fault (407) nor the origin's (502-504, as a
                # forward would show). The request never reached the origin: it goes again as
                # a proxy request, unless its body was already consumed.
                refused = behind_connect and not isinstance(e, (UpstreamAuthError, UpstreamTargetError))
                if refused:
                    self._refused_tunnel(key, e)
                if not refused or body is not None:
                    raise
                continue
            self.stats.record_ttfb(sent_at, self.clock())
            return resp
        raise RemoteProtocolError(f"{snap.upstream}: no usable connection after {_MAX_ATTEMPTS} tries")

    async def _h1_request(self, rec, conn: H1Connection, head, body, snap) -> H1ResponseStream:
        auth = snap.proxy_authorization if conn.absolute_form else None
        try:
            rh = await conn.send(head, body, auth)
        except BaseException:
            self._release(rec, False)
            raise
        if rh.status == 407 and conn.absolute_form:
            self._release(rec, False)
            raise auth_error(snap.upstream.redacted(),
                             f"{head.method} http://{head.endpoint.authority}{head.target}")
        return H1ResponseStream(rh, conn, lambda reusable: self._release(rec, reusable))

    async def _h2_request(self, rec, conn: H2Connection, head, body, snap) -> H2ResponseStream:
        no_body = head.body_length == 0 or body is None and head.body_length is None
        to_proxy = not is_origin_key(rec.key)  # an origin never sees the proxy's credentials
        auth = snap.proxy_authorization if to_proxy else None
        stream = conn.open_stream(h2_request_headers(head, auth),
                                  end_stream=no_body, on_close=lambda: self._stream_done(rec))
        self.stats.h2_streams += 1
        try:
            if not no_body:
                if body is not None:
                    async for chunk in body:
                        await stream.write(chunk)
                await stream.write_eof()
            status, headers = await stream.response()
        except BaseException:
            await stream.aclose(reset=True)
            raise
        if status == 407 and to_proxy:
            await stream.aclose(reset=True)
            raise auth_error(snap.upstream.redacted(),
                             f"{head.method} http://{head.endpoint.authority}{head.target}")
        return H2ResponseStream(h2_response_head(status, headers, head.method), stream)

    # ---- tunnels ----
    async def open_tunnel(self, host: str, port: int) -> ByteStream:
        """A tunnel to ``host:port``: CONNECT stream (h2), warm or cold CONNECT (h1), or direct.

        A :class:`SocketStream` (detachable to a plain socket over plain TCP) or an HTTP/2
        stream (``H2Stream``); see ``api.DetachableStream``.
        """
        check_host(host, port)  # LocalProtocolError: nothing to carry a broken name to a CONNECT line
        await self._ensure_started()
        snap = self.proxy.current
        self.stats.connections_opened += snap.upstream.is_direct
        return await self._tunnel(host, port, snap)

    async def _tunnel(self, host: str, port: int, snap: ProxySnapshot) -> SocketStream | H2Stream:
        """A tunnel through ``snap``'s upstream (for the application, or an origin TLS connection)."""
        up = snap.upstream
        now = self.clock()
        if up.is_direct:
            t = await open_transport(host, port, now=now, mark=self.mark,
                                     timeout=self.connect_timeout, what="target")
            self.stats.tunnels_cold += 1
            return SocketStream(t)
        self._last_tunnel = now
        key = snap.key
        if up.kind is UpstreamKind.HTTPS and key not in self._h1_keys:
            for _ in range(_MAX_ATTEMPTS):
                rec, conn, reused = await self._acquire(key, snap)
                if conn is None:
                    continue
                if isinstance(conn, H2Connection):
                    try:
                        return await self._h2_tunnel(rec, conn, host, port, snap, reused)
                    except ConnectionLost as e:
                        if e.retryable:
                            continue
                        raise RemoteProtocolError(str(e)) from None
                # ALPN chose http/1.1: this fresh connection becomes the tunnel
                self.conns.take(rec)
                self.stats.tunnels_cold += 1
                return await self._connect(conn.transport, host, port, snap)
            raise RemoteProtocolError(f"proxy {up}: no usable HTTP/2 connection for CONNECT")
        t = self._warm_transport(snap, now)
        if t is not None:
            try:
                return await self._connect(t, host, port, snap)
            except RemoteProtocolError:
                self.stats.retries += 1  # closed by the proxy just now: one cold try
        self.stats.tunnels_cold += 1
        return await self._connect(await self._open(key, snap), host, port, snap)

    def _warm_transport(self, snap: ProxySnapshot, now: float) -> Transport | None:
        """A ready HTTP/1.1 connection to ``snap``'s proxy for a CONNECT (warm, or an idle
        keep-alive one), or None; the warm set refills in the background."""
        self._last_tunnel = now
        t = self.warm.take(snap.key, now)
        if t is None and (idle := self.conns.take_idle(snap.key)) is not None:
            t = idle.transport  # an idle keep-alive connection is warm too
        self._warm_wanted.set()
        self.stats.tunnels_warm += t is not None
        return t

    async def _connect(self, t, host, port, snap) -> SocketStream:
        return await connect_over(t, host, port, snap.proxy_authorization,
                                  proxy=snap.upstream.redacted(), timeout=self.connect_timeout,
                                  early=self.early_connect_data)

    async def _h2_tunnel(self, rec, conn: H2Connection, host, port, snap, reused):
        authority = format_authority(host, port)
        stream = conn.open_stream(h2_connect_headers(authority, snap.proxy_authorization),
                                  end_stream=False, on_close=lambda: self._stream_done(rec))
        self.stats.h2_streams += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                status, headers = await stream.response()
            raise_for_status(ConnectResponse(status, "", tuple(headers)),
                             proxy=snap.upstream.redacted(), target=authority)
        except TimeoutError:
            await stream.aclose(reset=True)
            raise UpstreamTimeoutError(f"proxy {snap.upstream} did not answer CONNECT "
                                       f"{authority} within {self.connect_timeout:g} s") from None
        except BaseException:
            await stream.aclose(reset=True)
            raise
        if reused:
            self.stats.tunnels_warm += 1
        else:
            self.stats.tunnels_cold += 1
        return stream

    # ---- connections ----
    def _key_for(self, snap: ProxySnapshot, endpoint: Endpoint) -> PoolKey:
        host, port = endpoint.host, endpoint.port
        if endpoint.scheme == "https":
            key = origin_key(snap.key, host, port)
        elif snap.upstream.is_direct:
            key = proxy_key(snap.upstream, None, f"{host}:{port}")
        elif self._tunnels_http(snap, port):
            key = http_origin_key(snap.key, host, port)
        else:
            key = snap.key
        return key  # _acquire remembers its snapshot

    def _remember(self, key: PoolKey, snap: ProxySnapshot) -> None:
        """Keep ``key``'s proxy snapshot for its openers. Keys come per origin (direct, TLS
        origins, HTTP tunnels): past ``_KEYS_KEPT`` what the pool knows of keys with no
        connection and no waiter is dropped, so a day of browsing does not grow it."""
        self._snaps.setdefault(key, snap)
        if len(self._snaps) > _KEYS_KEPT:
            live = {c.key for c in self.plan.conns} | {w.key for w in self.plan.waiting} | {key}
            self._snaps = {k: v for k, v in self._snaps.items() if k in live}
            self.plan.h2_keys &= live
            self._h1_keys &= live

    def _tunnels_http(self, snap: ProxySnapshot, port: int) -> bool:
        """Whether an ``http`` request to ``port`` goes in a tunnel per origin: asked for, and
        the proxy speaks HTTP/1.1 (an HTTP/2 proxy multiplexes proxy requests already) and
        has not refused CONNECT to that port."""
        if self.plain_http != "tunnel" or (snap.key.upstream, port) in self._no_tunnel:
            return False
        return snap.upstream.kind is UpstreamKind.HTTP or snap.key in self._h1_keys

    def _refused_tunnel(self, key: PoolKey, e: UpstreamError) -> None:
        """The proxy refused CONNECT to an origin's port: that port's ``http`` requests go as
        proxy requests from now on (a proxy's policy is per port, like Squid's SSL_ports)."""
        port = origin_address(key)[1]
        if (key.upstream, port) not in self._no_tunnel:
            self._no_tunnel.add((key.upstream, port))
            log.warning("%s; plain HTTP to port %d goes as proxy requests from now on", e, port)
        self.stats.http_tunnels_refused += 1

    async def _acquire(self, key: PoolKey, snap: ProxySnapshot):
        """Wait for a placement: ``(record, connection, reused)``."""
        self._remember(key, snap)
        if key not in self._h1_keys and (is_origin_key(key) or snap.upstream.kind is UpstreamKind.HTTPS
                                         and not is_http_origin_key(key)):
            self.plan.h2_keys.add(key)  # ALPN offers h2 first: open one, not one per request
        waiter = self.plan.enqueue(key, self.clock())
        fut = asyncio.get_running_loop().create_future()
        self._futs[waiter] = fut
        self._assign()
        try:
            if fut.done() and fut.exception() is None:
                rec = fut.result()  # placed at once (a stream on a live h2 connection): no timer to arm
            else:
                async with asyncio.timeout(self.queue_timeout + self.connect_timeout):
                    rec = await asyncio.shield(fut)
        except BaseException as e:
            self._futs.pop(waiter, None)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result(), True)
            elif waiter in self.plan.waiting:
                self.plan.cancel(waiter, self.clock())
            else:
                fut.cancel()  # the opener releases the connection when it sees this
            if isinstance(e, TimeoutError):
                raise UpstreamTimeoutError(f"{snap.upstream}: no upstream connection within "
                                           f"{self.queue_timeout + self.connect_timeout:g} s") from None
            raise
        conn = self.conns.get(rec)
        if conn is None:
            self.conns.released(rec, self.clock(), reusable=False)
        return rec, conn, waiter.reused

    def _assign(self) -> None:
        if self._closing:
            return  # a closing pool places nothing: aclose failed its waiters
        now = self.clock()
        plan = self.plan.assign(now)
        self.conns.drop_all(plan.to_close)
        for a in plan.assigned:
            fut = self._futs.pop(a.waiter, None)
            if a.is_new:
                self._tasks.spawn(partial(self._open_for, a.conn, fut), "opening a connection")
            elif fut is None or fut.done():
                self.conns.released(a.conn, now, reusable=True)
            else:
                fut.set_result(a.conn)

    async def _open(self, key: PoolKey, snap: ProxySnapshot) -> Transport:
        up = snap.upstream
        if up.is_direct:
            host, _, port = key.origin.rpartition(":")
            return await open_transport(host.strip("[]"), int(port), now=self.clock(), mark=self.mark,
                                        timeout=self.connect_timeout, what="origin")
        return await open_transport(self.addresses.get(up.host, up.host), up.port, now=self.clock(), mark=self.mark,
                                    tls=self._tls if up.kind is UpstreamKind.HTTPS else None,
                                    server_hostname=up.host,
                                    timeout=self.connect_timeout, what=f"proxy {up}")

    async def _open_origin(self, key: PoolKey, snap: ProxySnapshot) -> TLSStream:
        """A verified TLS connection to the origin of ``key``, inside a tunnel through ``snap``."""
        if self._origin_tls is None:
            self._origin_tls = origin_tls_context(self._origin_ca_file)
        t = await open_origin_tls(partial(self._tunnel, *origin_address(key), snap), key,
                                  ctx=self._origin_tls, sessions=self.sessions, now=self.clock(),
                                  timeout=self.connect_timeout)
        self.stats.origin_tls_opened += 1
        self.stats.origin_tls_resumed += t.resumed
        return t

    async def _open_http_origin(self, key: PoolKey, snap: ProxySnapshot) -> Transport:
        """A proxy connection (warm when one is ready) with ``CONNECT`` to the origin of a
        plain-HTTP key written on it: the first request follows at once, and the connection
        reads the answer before the response (``H1Connection.connect_answer``), so a new
        origin costs no round trip more than a proxy request would."""
        host, port = origin_address(key)
        t = self._warm_transport(snap, self.clock())
        if t is None:
            self.stats.tunnels_cold += 1
            t = await self._open(snap.key, snap)
        if t.alpn == "h2":  # an https proxy that chose http/1.1 before chose HTTP/2 now
            self._h1_keys.discard(snap.key)
            t.abort()
            raise RemoteProtocolError(f"proxy {snap.upstream} chose HTTP/2 for a connection meant for a "
                                      "tunnel; plain HTTP goes to it as streams from now on")
        t.write(connect_request(host, port, snap.proxy_authorization))
        self.stats.http_tunnels_opened += 1
        return t

    async def _open_warm(self, snap: ProxySnapshot) -> Transport:
        return await self._open(snap.key, snap)

    def _warm_target(self) -> ProxySnapshot | None:
        """The proxy whose CONNECTs want warm connections now (an HTTP/1.1 proxy that
        carried a tunnel within the idle timeout), or None."""
        snap = self.proxy.current
        if (snap.upstream.is_direct or self.warm.size == 0 or snap.key in self.plan.h2_keys
                or self.clock() - self._last_tunnel > self.plan.idle_timeout):
            return None
        if snap.upstream.kind is UpstreamKind.HTTPS and snap.key not in self._h1_keys:
            return None  # h2 proxies carry tunnels as streams; nothing to keep warm
        return snap

    async def _open_for(self, rec: ConnRecord, fut: asyncio.Future | None) -> None:
        snap = self._snaps[rec.key]
        try:
            origin, plain = is_origin_key(rec.key), is_http_origin_key(rec.key)
            opener = self._open_origin if origin else self._open_http_origin if plain else self._open
            t = await opener(rec.key, snap)
            name = (t.name if origin else f"origin {rec.key.origin} via proxy {snap.upstream}" if plain
                    else f"proxy {snap.upstream}" if not snap.upstream.is_direct
                    else f"origin {rec.key.origin}")
            if t.alpn == "h2":
                conn = H2Connection(t, name=name, clock=self.clock, on_event=lambda ev: self._h2_event(rec, ev),
                                    ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
                self.conns.add(rec, conn)
                await conn.start(self.connect_timeout)
                self.conns.connected(rec, self.clock(), http2=True, max_streams=conn.max_streams)
            else:
                if snap.upstream.kind is UpstreamKind.HTTPS or origin:
                    self._h1_keys.add(rec.key)
                absolute = not (snap.upstream.is_direct or origin or plain)  # origin-form to an origin
                answer = ((snap.upstream.redacted(), format_authority(*origin_address(rec.key)), self.connect_timeout)
                          if plain else None)
                self.conns.add(rec, H1Connection(t, absolute_form=absolute, name=name, connect_answer=answer))
                self.conns.connected(rec, self.clock(), http2=False)
            self.stats.connections_opened += 1
        except BaseException as e:
            self.conns.drop(rec)
            if fut is not None and not fut.done():
                fut.set_exception(e if isinstance(e, Exception) else UpstreamError("cancelled"))
            self._assign()
            if not isinstance(e, Exception):
                raise
            return
        if fut is None or fut.done():
            self.conns.released(rec, self.clock(), reusable=True)
        else:
            fut.set_result(rec)
        self._assign()

    def _h2_event(self, rec: ConnRecord, event: H2Event) -> None:
        self.conns.h2_event(rec, event)
        self._assign()

    def _stream_done(self, rec: ConnRecord) -> None:
        self.conns.stream_done(rec, self.clock())
        self._assign()

    def _release(self, rec: ConnRecord, reusable: bool) -> None:
        self.conns.released(rec, self.clock(), reusable=reusable)
        self._assign()
