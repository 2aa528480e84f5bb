"""DNS interception: every query the machine sends is answered by Atlantic.

A and AAAA get a fake address from the `FakeIpPool` (so a later flow to that address is
tunnelled as ``CONNECT name:port`` and the name resolves at the exit node); PTR of a
fake address gets its name back; ``localhost`` names get loopback (RFC 6761). Every
other query type (MX, TXT, SRV, HTTPS, ...) is sent as DNS over TCP through a tunnel
to the configured resolver, never to a local resolver; failures and timeouts become
SERVFAIL. Malformed queries get FORMERR; nothing here raises on bad input.

Three ways in:

- `DnsInterceptor.handle_udp(packet, info)`: a policy handler for the system stack
  (UDP to port 53, any address, IPv4 and IPv6; first in ``policy.default_policy(dns=)``)
  that returns the full IP/UDP reply packet, or ``DROP`` when the answer comes later
  through ``send(packet)`` (forwarded queries);
- `DnsInterceptor.serve_tcp(sock)`: DNS over TCP (RFC 7766) for flows to port 53.

The clock is read here (an adapter), and passed to the pure pool.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import struct
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from atlantic.dns import message as dns
from atlantic.interceptor.checksum import l4_checksum
from atlantic.dns.fakeip import FakeIpPool
from atlantic.interceptor.packet import PROTO_UDP, PacketInfo, build_ipv4

log = logging.getLogger("atlantic.dns")

DNS_PORT = 53
DROP = b""  # policy.DROP: "mine, nothing to write now" in a policy chain
DEFAULT_RESOLVER = "9.9.9.9:53"
FORWARD_TIMEOUT_S = 5.0
MAX_INFLIGHT = 16  # forwarded queries talking to the upstream at once
MAX_PENDING = 256  # forwarded queries waiting or in flight; beyond that: SERVFAIL at once
TCP_IDLE_TIMEOUT_S = 10.0  # RFC 7766 suggests seconds, not minutes
TCP_MAX_QUERIES = 1000  # per DNS-over-TCP connection
_REVERSE_V4 = ".in-addr.arpa"
_REVERSE_V6 = ".ip6.arpa"

OpenTunnel = Callable[[str, int], Awaitable["ByteStream"]]
Send = Callable[[bytes], object]


class DnsForwardError(RuntimeError):
    """A forwarded query got no usable reply from the resolver (becomes SERVFAIL)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one query: ``reply`` to send now, or ``forward`` it (reply None
    and forward False: drop, e.g. a response sent to us or bytes with no ID to echo)."""

    reply: bytes | None
    query: dns.Query | None
    forward: bool = False


@dataclass(frozen=True, slots=True)
class DnsStats:
    """Counters for ``status``."""

    queries: int
    answered_fake: int
    forwarded: int
    formerr: int
    servfail: int
    refused: int
    notimp: int
    truncated: int
    inflight: int
    internal_errors: int  # queries this code failed on (SERVFAIL); a bug, logged once a minute


def parse_resolver(text: str) -> tuple[str, int]:
    """``"9.9.9.9:53"``, ``"[2620:fe::fe]:53"``, ``"dns.example:53"`` or a bare host (port 53)."""
    text = text.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"dns.resolver {text!r}: expected [IPv6]:port")
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"dns.resolver {text!r}: port must be a number") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"dns.resolver {text!r}: expected host:port, e.g. 9.9.9.9:53")
    return host, port


def build_udp_reply(info: PacketInfo, payload: bytes) -> bytes:
    """An IP/UDP packet from the query's destination back to its source, checksums right."""
    seg = bytearray(struct.pack("!HHHH", info.dport, info.sport, 8 + len(payload), 0) + payload)
    struct.pack_into("!H", seg, 6, l4_checksum(info.dst, info.src, PROTO_UDP, seg) or 0xFFFF)
    if info.version == 4:
        return build_ipv4(info.dst, info.src, PROTO_UDP, bytes(seg))
    # IPv6: no extension headers, hop limit 64
    return struct.pack("!IHBB16s16s", 0x60000000, len(seg), PROTO_UDP, 64, info.dst, info.src) + seg


def _reverse_to_ip(qname: str) -> bytes | None:
    """Address bytes of an in-addr.arpa / ip6.arpa name, or None."""
    try:
        if qname.endswith(_REVERSE_V4):
            parts = qname[: -len(_REVERSE_V4)].split(".")
            if len(parts) == 4:
                return ipaddress.IPv4Address(".".join(reversed(parts))).packed
        elif qname.endswith(_REVERSE_V6):
            nibbles = qname[: -len(_REVERSE_V6)].split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                return bytes.fromhex("".join(reversed(nibbles)))
    except ValueError:
        pass
    return None


class ByteStream(Protocol):
    """What ``open_tunnel`` returns: the pool's tunnel (``atlantic.pool.api.ByteStream``)."""

    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


async def _read_exactly(stream: ByteStream, n: int) -> bytes:
    buf = bytearray()
    for _ in range(n + 1):  # each read yields >= 1 byte or ends the loop
        if len(buf) >= n:
            break
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise DnsForwardError("resolver closed the connection mid-reply")
        buf += chunk
    return bytes(buf)


class DnsInterceptor:
    """Answers every DNS query of the machine; see the module docstring."""

    def __init__(self, pool: FakeIpPool, *, open_tunnel: OpenTunnel | None = None,
                 send: Send | None = None, resolver: str = DEFAULT_RESOLVER,
                 answer_aaaa: bool = True, forward_addresses: bool = False,
                 timeout_s: float = FORWARD_TIMEOUT_S,
                 max_inflight: int = MAX_INFLIGHT, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.pool = pool
        self.open_tunnel = open_tunnel
        self.send = send
        self.resolver = parse_resolver(resolver)
        self.answer_aaaa = answer_aaaa
        # direct upstream: this machine is the exit node, so A/AAAA resolve for real too
        # (through marked connections to the resolver), and no fake address is handed out.
        self.forward_addresses = forward_addresses
        self.timeout_s = timeout_s
        self.max_inflight, self.max_pending = max_inflight, max_pending
        self.clock = clock
        self.loop = loop  # for a stack serving the TUN from a thread
        self._sem: asyncio.Semaphore | None = None
        # Forwarded queries are tasks of one TaskGroup, owned by the ``_run`` task.
        self._runner: asyncio.Task | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pending = 0  # queued or in flight
        self.queries = self.answered_fake = self.forwarded = 0
        self.formerr = self.servfail = self.refused = self.notimp = self.truncated = 0
        self.internal_errors = 0
        self._next_error_log = float("-inf")

    # -- the decision (no I/O) ------------------------------------------------------

    def answer(self, data: bytes) -> Outcome:
        """What to do with one query message: reply here, forward, or drop. Never raises:
        a query this code cannot handle gets SERVFAIL, counted, and one log line a minute."""
        self.queries += 1
        try:
            q = dns.parse_query(data)
        except dns.DnsFormatError:
            reply = dns.formerr_for(data)
            self.formerr += reply is not None
            return Outcome(reply, None)
        try:
            return self._decide(q)
        except Exception as exc:  # noqa: BLE001 - hostile input must cost one answer, not the task
            self.internal_errors += 1
            now = self.clock()
            if now >= self._next_error_log:
                self._next_error_log = now + 60.0
                log.warning("DNS: cannot answer a %s query (%s: %s); SERVFAIL (logged once a minute)",
                            q.qtype, type(exc).__name__, str(exc)[:80])
            return Outcome(self._servfail(q), q)

    def _decide(self, q: dns.Query) -> Outcome:
        if q.opcode != dns.OPCODE_QUERY:
            self.notimp += 1
            return Outcome(dns.build_error(q, dns.NOTIMP), q)
        if q.qclass != dns.CLASS_IN:
            self.refused += 1
            return Outcome(dns.build_error(q, dns.REFUSED), q)
        if q.qtype in (dns.TYPE_A, dns.TYPE_AAAA) and not (self.forward_addresses and self.open_tunnel):
            return Outcome(self._answer_address(q), q)
        if q.qtype == dns.TYPE_PTR and (ip := _reverse_to_ip(q.qname)) and self.pool.is_fake(ip):
            name = self.pool.lookup(ip)
            if name is None:
                return Outcome(dns.build_answer(q, rcode=dns.NXDOMAIN), q)
            self.answered_fake += 1
            rec = dns.Record(q.qname, dns.TYPE_PTR, self.pool.ttl_s, dns.text_to_wire(name))
            return Outcome(dns.build_answer(q, [rec]), q)
        if self.open_tunnel is None:
            return Outcome(self._servfail(q), q)
        return Outcome(None, q, forward=True)

    def _answer_address(self, q: dns.Query) -> bytes:
        family = 4 if q.qtype == dns.TYPE_A else 6
        if not dns.is_hostname(q.qname):
            # Checked first: a name that could not travel in CONNECT (unprintable bytes, too
            # long once escaped) cannot be written back into an answer either.
            self.refused += 1
            return dns.build_error(q, dns.REFUSED)
        if q.qname == "localhost" or q.qname.endswith(".localhost"):
            addr = bytes([127, 0, 0, 1]) if family == 4 else bytes(15) + b"\x01"
            return dns.build_answer(q, [dns.Record(q.qname, q.qtype, self.pool.ttl_s, addr)])
        if family == 6 and not self.answer_aaaa:
            return dns.build_answer(q)  # NODATA: the name exists, it has no IPv6 here
        addr = self.pool.assign(q.qname, family, self.clock())
        if addr is None:
            return self._servfail(q)
        self.answered_fake += 1
        return dns.build_answer(q, [dns.Record(q.qname, q.qtype, self.pool.ttl_s, addr)])

    def _servfail(self, q: dns.Query) -> bytes:
        self.servfail += 1
        return dns.build_error(q, dns.SERVFAIL)

    # -- UDP, from the stack ----------------------------------------------------------

    def handle_udp(self, packet: memoryview, info: PacketInfo) -> bytes | None:
        """A policy handler: the reply packet for a UDP query to port 53; ``DROP`` (b"")
        for a query answered later through ``send`` (forwarded) or not at all; None for
        packets that are not DNS (the next handler's)."""
        # fragments carry no ports (dport 0): they are the next handler's to drop
        if info.protocol != PROTO_UDP or info.dport != DNS_PORT:
            return None
        start = info.header_len + 8
        data = bytes(packet[start : start + info.payload_len])
        out = self.answer(data)
        reply = self._schedule_udp(out.query, data, info) if out.forward else out.reply
        if reply is None:
            return DROP
        limit = out.query.udp_limit if out.query is not None else dns.UDP_PLAIN_LIMIT
        if len(reply) > limit:
            reply = dns.truncate(reply, limit)
            self.truncated += 1
        return build_udp_reply(info, reply)

    def _schedule_udp(self, q: dns.Query, data: bytes, info: PacketInfo) -> bytes | None:
        """Start forwarding; return SERVFAIL now if that cannot happen (no loop, too busy)."""
        if self.send is None or self._pending >= self.max_pending:
            return self._servfail(q)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the stack runs in a thread: hand over to the daemon's loop
            loop = None
        if loop is None:
            if self.loop is None or self.loop.is_closed():
                return self._servfail(q)
            self._pending += 1
            self.loop.call_soon_threadsafe(self._start_forward, q, data, info)
            return None
        self._pending += 1
        self._start_forward(q, data, info)
        return None

    def _start_forward(self, q: dns.Query, data: bytes, info: PacketInfo) -> None:
        """On the loop: hand one query to the task that owns the forwards."""
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._runner.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._runner = loop.create_task(self._run(self._queue), name="dns-forward")
        self._queue.put_nowait((q, data, info))

    async def _run(self, queue: asyncio.Queue) -> None:
        """Own every forwarded query (one TaskGroup) until ``aclose`` cancels this task."""
        async with asyncio.TaskGroup() as group:
            while True:
                group.create_task(self._forward_udp(*await queue.get()))

    async def _forward_udp(self, q: dns.Query, data: bytes, info: PacketInfo) -> None:
        try:
            await self._forward_udp_once(q, data, info)
        finally:
            self._pending -= 1

    async def _forward_udp_once(self, q: dns.Query, data: bytes, info: PacketInfo) -> None:
        reply = await self.resolve(q, data)
        if len(reply) > q.udp_limit:
            reply = dns.truncate(reply, q.udp_limit)
            self.truncated += 1
        try:
            res = self.send(build_udp_reply(info, reply))
            if inspect.isawaitable(res):
                await res
        except OSError:
            pass  # the TUN is gone (shutting down); the client retries

    # -- forwarding over TCP through the upstream -------------------------------------

    async def resolve(self, q: dns.Query, data: bytes) -> bytes:
        """The resolver's reply to *data* (the query *q*), or SERVFAIL; never raises."""
        self.forwarded += 1
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_inflight)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._sem:
                    reply = await self._exchange(data)
            rid, _rcode, question = dns.parse_reply_header(reply)
            if rid != q.id or question.lower() != q.question.lower():
                raise DnsForwardError("reply does not match the query")
            return reply
        except Exception:  # noqa: BLE001 - the tunnel's own errors (UpstreamError, ...) too
            return self._servfail(q)

    async def _exchange(self, data: bytes) -> bytes:
        host, port = self.resolver
        stream = await self.open_tunnel(host, port)
        try:
            await stream.write(struct.pack("!H", len(data)) + data)
            (n,) = struct.unpack("!H", await _read_exactly(stream, 2))
            return await _read_exactly(stream, n)
        finally:
            await stream.aclose()

    # -- DNS over TCP, from the dispatcher --------------------------------------------

    async def serve_tcp(self, sock: socket.socket, first: bytes = b"") -> None:
        """Answer length-prefixed queries on *sock* (non-blocking) until EOF, idle timeout
        or TCP_MAX_QUERIES; *first* holds bytes already read (the dispatcher's sniff).
        Closes *sock*."""
        loop = asyncio.get_running_loop()
        buf = bytearray(first)
        try:
            for _ in range(TCP_MAX_QUERIES):
                while len(buf) < 2 or len(buf) < 2 + ((buf[0] << 8) | buf[1]):
                    async with asyncio.timeout(TCP_IDLE_TIMEOUT_S):
                        chunk = await loop.sock_recv(sock, 65537)
                    if not chunk:
                        return
                    buf += chunk
                n = (buf[0] << 8) | buf[1]
                data = bytes(buf[2 : 2 + n])
                del buf[: 2 + n]
                out = self.answer(data)
                reply = await self.resolve(out.query, data) if out.forward else out.reply
                if reply is None:
                    return
                await loop.sock_sendall(sock, struct.pack("!H", len(reply)) + reply)
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()

    # -- questions from the dispatcher and status -------------------------------------

    def lookup(self, ip) -> str | None:
        """The name behind fake address *ip* (bytes or text), or None."""
        return self.pool.lookup(ip)

    def is_fake(self, ip) -> bool:
        """True if *ip* lies in a fake-IP range."""
        return self.pool.is_fake(ip)

    def pin(self, ip) -> bool:
        """A flow to *ip* started: keep its mapping until `unpin` (see `FakeIpPool.pin`)."""
        return self.pool.pin(ip)

    def unpin(self, ip) -> bool:
        """The flow to *ip* ended."""
        return self.pool.unpin(ip)

    def stats(self) -> DnsStats:
        """Counter snapshot."""
        return DnsStats(self.queries, self.answered_fake, self.forwarded, self.formerr,
                        self.servfail, self.refused, self.notimp, self.truncated, self._pending,
                        self.internal_errors)

    def counters(self) -> dict:
        """The counters as a dict, for ``status --json``."""
        s = self.stats()
        return {k: getattr(s, k) for k in s.__slots__}

    async def aclose(self, timeout: float = 1.0) -> None:
        """Cancel forwarded queries still in flight (bounded wait)."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner], timeout=timeout)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<DnsInterceptor queries={s.queries} fake={s.answered_fake} "
                f"forwarded={s.forwarded} servfail={s.servfail} inflight={s.inflight}>")
