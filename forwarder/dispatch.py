"""The listener side of the forwarder: accept captured flows and carry each over the pool.

The system stack hands every captured TCP flow to one listening socket; the peer port
of an accepted connection is the NAT port, and ``lookup(port)`` says where the
application was going. The first bytes decide the way (``sniff``):

- an HTTP/1.x request: the request relay (``serve_http``), every request over the
  shared pool's warm connections;
- a TLS ClientHello: a tunnel to the SNI name (through a proxy, so the name resolves
  at the exit node), over a warm CONNECT connection or an HTTP/2 stream;
- anything else, or silence (server-first protocols): a tunnel to the destination.

Tunnels over plain sockets are relayed with ``os.splice``; HTTP/2 streams and TLS to
the proxy through Python. A flow that cannot be carried (no NAT entry, proxy refusal,
dead proxy) is reset at once, so the application fails fast; the reason is logged once
per kind of failure (not per flow) and shown in ``status``.

Every accept loop and flow is a task of one TaskGroup (held by one runner task); a flow
catches and counts its own errors, so one flow's bug never cancels the others. Shutdown
(``aclose``) stops accepting, gives open flows a while, then cancels them, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from atlantic.pool.errors import UpstreamError
from atlantic.forwarder.http1 import HttpCounters, serve_http
from atlantic.pool.splice import RelayCounters, abort_socket, relay
from atlantic.forwarder.sniff import FlowKind, sniff
from atlantic.forwarder.stream_relay import relay_stream
from atlantic.pool.upstream import Upstream
from atlantic.dns.intercept import DnsInterceptor
from atlantic.pool.api import DetachableStream, Pool

log = logging.getLogger("atlantic.forwarder")

Lookup = Callable[[int], "tuple[tuple[str, int], tuple[str, int]] | None"]
ERROR_LOG_INTERVAL_S = 60.0


@dataclass(slots=True)
class ErrorNote:
    """How often one kind of failure happened, and when it was last logged."""

    message: str
    count: int
    first: float
    last: float
    logged: float


class Dispatcher:
    """Accepts captured flows, tunnels each to the upstream, keeps the flow counters."""

    def __init__(self, upstream: Upstream, lookup: Lookup, pool: Pool, *, idle_timeout: float,
                 dns: DnsInterceptor | None = None, carried_ports: frozenset[int] = frozenset(),
                 reject_other_ports: bool = False):
        self.upstream = upstream
        self.lookup = lookup
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.dns = dns
        self.carried_ports = carried_ports
        self.reject_other_ports = reject_other_ports
        self.relay_counters = RelayCounters()
        self.http_counters = HttpCounters()
        self.kinds = {kind.value: 0 for kind in FlowKind}
        self.flows_total = self.flows_failed = 0
        self.errors: dict[str, ErrorNote] = {}
        self.flows_open = 0  # accepted and not finished yet
        self._no_flows = asyncio.Event()  # set while flows_open == 0
        self._no_flows.set()
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task | None = None
        self._accept_tasks: list[asyncio.Task] = []  # handles, to stop accepting

    async def serve(self, listener: socket.socket) -> Dispatcher:
        """Start accepting on ``listener`` (non-blocking, listening); returns self as the server."""
        if self._runner is None:
            ready = asyncio.Event()
            self._runner = asyncio.create_task(self._run(ready), name="dispatcher")
            await ready.wait()
        self._accept_tasks.append(self._group.create_task(self._accept_loop(listener), name="accept"))
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

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: say so, back off, keep serving
                self.note_error(f"accept failed: {exc.strerror or exc}")
                await asyncio.sleep(0.1)
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the listener was closed: stop accepting here
                self.note_error(f"accept stopped ({type(exc).__name__}: {exc})")
                return
            sock.setblocking(False)
            self.flows_open += 1  # counted from here: a drain must wait for it too
            self._no_flows.clear()
            self._group.create_task(self._flow(sock, peer[1]))

    async def _flow(self, sock: socket.socket, nat_port: int) -> None:
        """One accepted flow, start to end; its errors are its own (counted, reset)."""
        try:
            await self._serve_flow(sock, nat_port)
        except Exception as exc:  # noqa: BLE001 - a bug costs this flow, never its siblings
            self._refuse(sock, f"flow from NAT port {nat_port} failed ({type(exc).__name__}: {exc})")
        finally:
            self.flows_open -= 1
            if self.flows_open == 0:
                self._no_flows.set()

    async def _serve_flow(self, sock: socket.socket, nat_port: int) -> None:
        self.flows_total += 1
        flow = self.lookup(nat_port)
        if flow is None:
            self._refuse(sock, f"no NAT entry for listener peer port {nat_port}")
            return
        _src, (ip, port) = flow
        dns = self.dns
        if port == 53 and dns is not None:
            await dns.serve_tcp(sock)  # DNS over TCP: answered here, like UDP
            return
        if self.carried_ports and port not in self.carried_ports and self.reject_other_ports:
            self._refuse(sock, f"port {port} is not carried by the upstream (capture.ports); "
                               f"flows to it are refused (capture.other_ports = reject)")
            return
        name = None
        if dns is not None and dns.is_fake(ip):
            name = dns.lookup(ip)
            if name is None:
                self._refuse(sock, f"flow to {ip}: the name behind this fake address is no longer "
                                   "known (an expired DNS answer); the application must look it up again")
                return
            dns.pin(ip)  # the address must not go to another name while this flow uses it
        try:
            await self._carry(sock, ip, port, name)
        except Exception as exc:  # noqa: BLE001 - a bug costs this flow, never the daemon
            self._refuse(sock, f"flow to {name or ip}:{port} failed ({type(exc).__name__}: {exc})")
        finally:
            if name is not None:
                dns.unpin(ip)

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        self.flows_failed += 1
        self.note_error(reason)
        abort_socket(sock)

    async def _carry(self, sock: socket.socket, ip: str, port: int, name: str | None) -> None:
        try:
            sniffed = await sniff(sock)
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
                             address=ip if name is not None else None)
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
            self.note_error(str(exc))
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

    def note_error(self, message: str) -> None:
        """Count a failure; log it the first time and then at most once a minute."""
        now = time.monotonic()
        note = self.errors.get(message)
        if note is None:
            self.errors[message] = ErrorNote(message, 1, now, now, now)
            log.warning("%s", message)
            if len(self.errors) > 256:  # bounded: forget the oldest kinds
                oldest = min(self.errors.values(), key=lambda n: n.last)
                del self.errors[oldest.message]
            return
        note.count += 1
        note.last = now
        if now - note.logged >= ERROR_LOG_INTERVAL_S:
            note.logged = now
            log.warning("%s (%d times so far)", message, note.count)

    def counters(self) -> dict:
        """Flow counters and the latest error, for ``status``."""
        http = self.http_counters
        report = {
            "flows_open": self.flows_open,
            "flows_total": self.flows_total,
            "flows_failed": self.flows_failed + http.upstream_errors,
            "flow_kinds": dict(self.kinds),
            "bytes_up": self.relay_counters.bytes_up + http.bytes_up,
            "bytes_down": self.relay_counters.bytes_down + http.bytes_down,
            "http": {"requests": http.requests, "bad_requests": http.bad_requests,
                     "upstream_errors": http.upstream_errors, "aborted": http.aborted, "tunnels": http.tunnels},
            "pool": self.pool.counters(),
        }
        if self.dns is not None:
            report["dns"] = self.dns.counters()
        if self.errors:
            last = max(self.errors.values(), key=lambda n: n.last)
            report["last_error"] = {
                "message": last.message,
                "count": last.count,
                "age_s": round(time.monotonic() - last.last, 3),
            }
        return report
