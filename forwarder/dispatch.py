"""The listener side of the forwarder: accept captured flows and carry each over the pool.

Captured TCP flows arrive on two kinds of listening socket. The kernel's redirect
(``system/redirect.py``, the default) delivers them to a loopback listener, and conntrack
says where the application was going (``interceptor.origdst``). The TUN's packet NAT
(``capture.tcp = "tun"``, and whatever TCP reaches the TUN anyway) delivers them to the
TUN-address listener, where the peer port is the NAT port and ``lookup(port)`` says it.
The first bytes decide the way (``sniff``):

- an HTTP/1.x request: the request relay (``serve_http``), every request over the
  shared pool's warm connections;
- a TLS ClientHello: a tunnel to the SNI name (through a proxy, so the name resolves
  at the exit node), over a warm CONNECT connection or an HTTP/2 stream; or, for names
  the user listed for interception (opt-in, ``tls``), TLS terminated here with the
  local CA and its requests relayed over the pool like HTTP (``tlsterm``);
- anything else, or silence (server-first protocols): a tunnel to the destination.

Tunnels over plain sockets are relayed with ``os.splice``; HTTP/2 streams and TLS to
the proxy through Python. A flow that cannot be carried (no NAT entry, proxy refusal,
dead proxy) is reset at once, so the application fails fast; the reason is logged once
per kind of failure (not per flow) and shown in ``status``.

Every accept loop and flow is a task of one TaskGroup (held by one runner task); a flow
catches and counts its own errors, so one flow's bug never cancels the others. Shutdown
(``aclose``) stops accepting, gives open flows a while, then cancels them, bounded.

Limits: at most ``max_flows`` flows are open at once (by default what the descriptor
limit holds, ~6 descriptors per tunnel); a flow beyond it is reset at once, counted and
logged once a minute, so that no open flow meets EMFILE half-way. The daemon raises the
limit first (``raise_nofile_limit``). Failures are counted per kind (``note_error``),
each kind logged as one line at most once a minute, with its latest detail.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from atlantic.pool.errors import UpstreamError
from atlantic.forwarder.http1 import HEAD_TIMEOUT_S, HttpCounters, serve_http
from atlantic.forwarder.http1_heads import failure_kind, where
from atlantic.pool.splice import RelayCounters, abort_socket, relay
from atlantic.forwarder.sniff import FlowKind, sniff
from atlantic.forwarder.stream_relay import relay_stream
from atlantic.forwarder.intercept import InterceptPolicy
from atlantic.forwarder.tlsterm import TlsTerminator
from atlantic.interceptor.origdst import original_destination
from atlantic.pool.upstream import Upstream
from atlantic.dns.intercept import DnsInterceptor
from atlantic.pool.api import DetachableStream, Pool

log = logging.getLogger("atlantic.forwarder")

Flow = "tuple[tuple[str, int], tuple[str, int]]"  # (application's address, where it was going)
Lookup = Callable[[int], "Flow | None"]
ERROR_LOG_INTERVAL_S = 60.0
MAX_ERROR_KINDS = 256
MAX_MESSAGE = 400  # characters of one logged line
ACCEPT_BATCH = 64  # connections accepted per wake-up of a listener, then the loop runs others
FDS_PER_FLOW = 6  # a spliced tunnel: the app's socket, the upstream's, two pipes
FD_RESERVE = 320  # pool connections (pool.max_total, 256 by default), listeners, TUN, logs
_QUOTED_OR_NUMBER = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


@dataclass(slots=True)
class ErrorNote:
    """How often one kind of failure happened, its latest message, when last logged."""

    kind: str
    message: str
    count: int
    first: float
    last: float
    logged: float


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``min(hard, wanted)`` (never lower it); returns
    ``(soft, hard)`` as now in force. For the daemon to call once at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # e.g. above the kernel's nr_open: keep what we have
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def default_max_flows(soft: int | None = None, reserve: int = FD_RESERVE) -> int:
    """Flows the descriptor limit holds: ``(soft - reserve) // FDS_PER_FLOW``; ``reserve``
    covers pool connections and the daemon's own files (capped at half the limit), ``soft``
    defaults to the current soft RLIMIT_NOFILE."""
    if soft is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, (soft - min(reserve, soft // 2)) // FDS_PER_FLOW)


def one_line(text: str) -> str:
    """``text`` as one bounded log line: whitespace runs become one space, other control
    characters are escaped (a request can carry anything into an error message)."""
    text = " ".join(text.split())
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def bug_kind(what: str, exc: BaseException) -> str:
    """The kind of an unexpected error: ``what``, its type, and its message with quoted
    parts and numbers blanked (they name flows, not kinds of failure)."""
    return f"{what} ({type(exc).__name__}: {_QUOTED_OR_NUMBER.sub('_', str(exc))[:80]})"


class Dispatcher:
    """Accepts captured flows, tunnels each to the upstream, keeps the flow counters."""

    def __init__(self, upstream: Upstream, lookup: Lookup, pool: Pool, *, idle_timeout: float,
                 dns: DnsInterceptor | None = None, carried_ports: frozenset[int] = frozenset(),
                 reject_other_ports: bool = False, max_flows: int | None = None,
                 head_timeout: float = HEAD_TIMEOUT_S, ca=None, intercept: InterceptPolicy | None = None,
                 origin_ca_file: str | None = None):
        """``max_flows``: open flows at most (None or 0: ``default_max_flows()`` from the
        descriptor limit now in force); ``head_timeout``: seconds for a whole HTTP request
        head from its first byte, then 408; ``ca`` (a loaded ``localca.LocalCA``) and
        ``intercept``: TLS termination for the listed names (``self.tls``; without both,
        every TLS flow is tunnelled); ``origin_ca_file``: a CA trusted for origins besides
        the system's (the pool has the same; this one is for WebSocket tunnels)."""
        self.upstream = upstream
        self.lookup = lookup
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.dns = dns
        self.carried_ports = carried_ports
        self.reject_other_ports = reject_other_ports
        self.max_flows = max_flows or default_max_flows()
        self.head_timeout = head_timeout
        self.flows_refused = 0  # reset at once: max_flows were open
        self.relay_counters = RelayCounters()
        self.http_counters = HttpCounters()
        self.tls = None if ca is None or not intercept else TlsTerminator(
            ca, intercept, pool, note_error=self.note_error, http_counters=self.http_counters,
            idle_timeout=idle_timeout, head_timeout=head_timeout, origin_ca_file=origin_ca_file)
        self.kinds = {kind.value: 0 for kind in FlowKind}
        self.captured = {"redirect": 0, "tun": 0}  # flows by the way they reached us
        self.flows_total = self.flows_failed = 0
        self.errors: dict[str, ErrorNote] = {}
        self.flows_open = 0  # accepted and not finished yet
        self._no_flows = asyncio.Event()  # set while flows_open == 0
        self._no_flows.set()
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task | None = None
        self._accept_tasks: list[asyncio.Task] = []  # handles, to stop accepting

    async def serve(self, listener: socket.socket, *, redirected: bool = False) -> Dispatcher:
        """Start accepting on ``listener`` (non-blocking, listening); returns self as the server.

        ``redirected``: flows come from the kernel's redirect (destination from conntrack),
        else from the TUN's packet NAT (destination from ``lookup`` by the peer port).
        """
        if self._runner is None:
            ready = asyncio.Event()
            self._runner = asyncio.create_task(self._run(ready), name="dispatcher")
            await ready.wait()
        self._accept_tasks.append(self._group.create_task(self._accept_loop(listener, redirected), name="accept"))
        return self

    async def _run(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            ready.set()
            await self._stop.wait()  # then the group waits for what is left (see aclose)

    def close(self) -> None:
        """Stop accepting new flows (open ones continue until ``aclose``)."""
        for task in self._accept_tasks:
            task.cancel()

    async def aclose(self, timeout: float) -> None:
        """Stop accepting, give open flows ``timeout`` seconds, then cut them."""
        self.close()
        runner = self._runner
        if runner is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._no_flows.wait()
        except TimeoutError:
            runner.cancel()  # the group cancels every flow still open
        self._stop.set()
        await asyncio.wait([runner], timeout=1.0)

    async def _accept_loop(self, listener: socket.socket, redirected: bool) -> None:
        """Accept every pending connection each time ``listener`` is readable (a level-
        triggered reader that stays registered: no reader added and removed, no failed
        accept and no future per connection, as with ``loop.sock_accept``; a burst is
        taken in batches of ``ACCEPT_BATCH``)."""
        loop = asyncio.get_running_loop()
        fd = listener.fileno()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        here = listener.getsockname()[:2]
        try:
            while True:
                await readable.wait()
                readable.clear()
                for _ in range(ACCEPT_BATCH):
                    try:
                        sock, peer = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if listener.fileno() < 0:  # closed under us: stop accepting here
                            self.note_error(f"accept stopped ({exc.strerror or exc})")
                            return
                        self.note_error(f"accept failed: {exc.strerror or exc}")  # EMFILE and friends
                        await asyncio.sleep(0.1)  # back off, keep serving
                        break
                    if self.flows_open >= self.max_flows:
                        self._refuse_over_limit(sock)
                        continue
                    sock.setblocking(False)
                    self.flows_open += 1  # counted from here: a drain must wait for it too
                    self._no_flows.clear()
                    self._group.create_task(self._flow(sock, peer, here if redirected else None))
                else:
                    readable.set()  # more may be pending: let the flows just started run first
                    await asyncio.sleep(0)
        finally:
            loop.remove_reader(fd)

    def _refuse_over_limit(self, sock: socket.socket) -> None:
        """Reset a flow at once: ``max_flows`` are open (better now than EMFILE half-way)."""
        self.flows_total += 1
        self.flows_refused += 1
        self._refuse(sock, f"too many flows: {self.flows_open} open, limit {self.max_flows} (daemon.max_flows); "
                           "new flows are reset until some end", "too many flows")

    async def _flow(self, sock: socket.socket, peer: tuple, redirect_listener: tuple | None) -> None:
        """One accepted flow, start to end; its errors are its own (counted, reset).
        ``redirect_listener``: the (host, port) of the loopback listener that accepted a
        kernel-redirected flow; None for a flow from the TUN's packet NAT."""
        try:
            await self._serve_flow(sock, peer, redirect_listener)
        except Exception as exc:  # noqa: BLE001 - a bug costs this flow, never its siblings
            self._refuse(sock, f"flow from port {peer[1]} failed ({type(exc).__name__} at {where(exc)}: {exc})",
                         bug_kind("flow failed", exc))
        finally:
            self.flows_open -= 1
            if self.flows_open == 0:
                self._no_flows.set()

    async def _serve_flow(self, sock: socket.socket, peer: tuple, redirect_listener: tuple | None) -> None:
        self.flows_total += 1
        if redirect_listener is not None:
            dst = original_destination(sock, redirect_listener)
            if dst is None:
                self._refuse(sock, f"a connection from port {peer[1]} to the redirect listener was not "
                                   "redirected by the kernel (no original destination): refused",
                             "not redirected")
                return
            flow = (peer[:2], dst)
            self.captured["redirect"] += 1
        else:
            flow = self.lookup(peer[1])
            if flow is None:
                self._refuse(sock, f"no NAT entry for listener peer port {peer[1]}", "no NAT entry")
                return
            self.captured["tun"] += 1
        _src, (ip, port) = flow
        dns = self.dns
        if port == 53 and dns is not None:
            await dns.serve_tcp(sock)  # DNS over TCP: answered here, like UDP
            return
        if self.carried_ports and port not in self.carried_ports and self.reject_other_ports:
            self._refuse(sock, f"port {port} is not carried by the upstream (capture.ports); "
                               f"flows to it are refused (capture.other_ports = reject)", "port not carried")
            return
        name = None
        if dns is not None and dns.is_fake(ip):
            name = dns.lookup(ip)
            if name is None:
                self._refuse(sock, f"flow to {ip}: the name behind this fake address is no longer "
                                   "known (an expired DNS answer); the application must look it up again",
                             "fake address expired")
                return
            dns.pin(ip)  # the address must not go to another name while this flow uses it
        try:
            await self._carry(sock, ip, port, name)
        except Exception as exc:  # noqa: BLE001 - a bug costs this flow, never the daemon
            self._refuse(sock, f"flow to {name or ip}:{port} failed ({type(exc).__name__} at {where(exc)}: {exc})",
                         bug_kind("flow failed", exc))
        finally:
            if name is not None:
                dns.unpin(ip)

    def _refuse(self, sock: socket.socket, reason: str, kind: str | None = None) -> None:
        self.flows_failed += 1
        self.note_error(reason, kind)
        abort_socket(sock)

    async def _carry(self, sock: socket.socket, ip: str, port: int, name: str | None) -> None:
        try:
            sniffed = await sniff(sock, port=port)
        except OSError:
            sock.close()  # the application went away before saying anything
            return
        except asyncio.CancelledError:
            abort_socket(sock)
            raise
        self.kinds[sniffed.kind.value] += 1
        if sniffed.kind is FlowKind.HTTP:
            await serve_http(sock, sniffed.data, (name or ip, port), self.pool, counters=self.http_counters,
                             idle_timeout=self.idle_timeout, note_error=self.note_error,
                             to_destination=self.upstream.is_direct and name is None,
                             address=ip if name is not None else None, head_timeout=self.head_timeout)
            return
        tls = self.tls
        if sniffed.kind is FlowKind.TLS and tls is not None:
            context = tls.context_for(sniffed.sni)
            if context is not None:
                await tls.serve(sock, context, sniffed.data, sniffed.sni, port)
                return
        # Through a proxy, the name (from DNS, or the ClientHello's SNI) travels so the
        # exit node resolves it; direct connects to the address the application chose.
        host = name or (sniffed.sni if sniffed.sni and not self.upstream.is_direct else ip)
        await self._tunnel(sock, host, port, sniffed.data)

    async def _tunnel(self, sock: socket.socket, host: str, port: int, first_up: bytes) -> None:
        try:
            stream = await self.pool.open_tunnel(host, port)
        except UpstreamError as exc:
            self.flows_failed += 1
            self.note_error(str(exc), f"tunnel: {failure_kind(exc)}")
            abort_socket(sock)
            return
        except asyncio.CancelledError:
            abort_socket(sock)
            raise
        detached = stream.detach() if isinstance(stream, DetachableStream) else None
        if detached is not None:
            upstream_sock, leftover = detached
            await relay(sock, upstream_sock, self.relay_counters, idle_timeout=self.idle_timeout,
                        to_upstream=first_up, to_app=leftover)
            return
        try:
            result = await relay_stream(sock, stream, first_up=first_up, idle_timeout=self.idle_timeout)
            self.relay_counters.bytes_up += result.bytes_up
            self.relay_counters.bytes_down += result.bytes_down
        finally:
            sock.close()

    def note_error(self, message: str, kind: str | None = None) -> None:
        """Count a failure of ``kind`` (default: the message itself); log it as one line the
        first time, then at most once a minute with the latest message and the count.

        A message may name a destination; its kind must not, or every destination would
        be a new kind with a line of its own.
        """
        now = time.monotonic()
        message = one_line(message)
        kind = message if kind is None else one_line(kind)
        note = self.errors.get(kind)
        if note is None:
            self.errors[kind] = ErrorNote(kind, message, 1, now, now, now)
            log.warning("%s", message)
            if len(self.errors) > MAX_ERROR_KINDS:  # bounded: forget the oldest kinds
                oldest = min(self.errors.values(), key=lambda n: n.last)
                del self.errors[oldest.kind]
            return
        note.count += 1
        note.last = now
        note.message = message
        if now - note.logged >= ERROR_LOG_INTERVAL_S:
            note.logged = now
            log.warning("%s (%d times so far of this kind)", message, note.count)

    def counters(self) -> dict:
        """Flow counters and the latest error, for ``status``."""
        http = self.http_counters
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        report = {
            "flows_open": self.flows_open,
            "flows_total": self.flows_total,
            "flows_failed": self.flows_failed + http.upstream_errors,
            "flows_refused": self.flows_refused,
            "flow_kinds": dict(self.kinds),
            "flows_captured": dict(self.captured),
            "bytes_up": self.relay_counters.bytes_up + http.bytes_up,
            "bytes_down": self.relay_counters.bytes_down + http.bytes_down,
            "limits": {"max_flows": self.max_flows, "open_files": soft,
                       "open_files_hard": -1 if hard == resource.RLIM_INFINITY else hard,
                       "head_timeout_s": self.head_timeout},
            "http": {"requests": http.requests, "bad_requests": http.bad_requests,
                     "head_timeouts": http.head_timeouts, "upstream_errors": http.upstream_errors,
                     "aborted": http.aborted, "tunnels": http.tunnels},
            "pool": self.pool.counters(),
        }
        if self.dns is not None:
            report["dns"] = self.dns.counters()
        if self.tls is not None:
            report["tls"] = self.tls.status()
        if self.errors:
            last = max(self.errors.values(), key=lambda n: n.last)
            report["last_error"] = {
                "message": last.message,
                "count": last.count,
                "age_s": round(time.monotonic() - last.last, 3),
            }
        return report
