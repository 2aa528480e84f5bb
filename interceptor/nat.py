"""The system stack's NAT table: pure core, time passed in, packets rewritten in place.

An application's TCP segment A:a -> D:d read from the TUN is rewritten to
V:n -> I:L (V the virtual client address, n a NAT port, I:L the listener) and
written back, so the kernel delivers the flow to the listener; the listener's
replies I:L -> V:n are rewritten to D:d -> A:a. The listener learns D:d with
``lookup(n)``.

Speed: with no IP options the four rewritten fields are the contiguous bytes
12..24 of the packet, so one 12-byte key finds the session in either direction and
one slice assignment rewrites it. The checksum adjustment of each direction is
precomputed per session (RFC 1624), so a packet costs two modular subtractions.

Thread safety: the packet thread is the only writer; ``lookup`` (another thread)
does single dict reads, atomic under the GIL, and takes no lock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from atlantic.interceptor.checksum import adjustment
from atlantic.interceptor.packet import (
    PROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    MalformedPacket,
    PacketInfo,
    build_rst_reply,
    format_addr,
    parse,
)

# Verdicts of ``translate`` (plain ints: compared once per packet).
DROP = 0  # counted; write nothing
UP = 1  # buf rewritten app -> listener; write it back
DOWN = 2  # buf rewritten listener -> app; write it back
REPLY = 3  # write ``table.reply`` instead (e.g. a RST to the app)
POLICY = 4  # not for the NAT (UDP, ICMP, IPv6...): ``table.info`` describes it
FULL_SCAN_INTERVAL_S = 1.0  # a full table looks for idle sessions at most this often

# One unpack reads every field the fast path needs from an option-less IPv4/TCP
# header: version+IHL, total length, flags+fragment offset, protocol, IP checksum,
# the 12 bytes addresses+ports (the session key), data offset, TCP flags, TCP checksum.
_V4_TCP = struct.Struct("!BxHxxHxBH12s8xBBxxH")
_CK_ADDRS = struct.Struct("!H12s")  # IP checksum followed by the rewritten addresses+ports
_CK = struct.Struct("!H")

# Session state bits.
_ESTABLISHED = 1
_FIN_UP = 2
_FIN_DOWN = 4
_RST = 8
_CLOSED_BOTH = _FIN_UP | _FIN_DOWN


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Addresses and limits of one NAT table (4 raw bytes for IPv4, 16 for IPv6)."""

    inet_addr: bytes  # the TUN's address, where the listener listens
    client_addr: bytes  # the virtual client: NAT'd source, routed to the TUN, not local
    listen_port: int
    port_min: int = 1024
    port_max: int = 65535
    max_sessions: int = 60000
    syn_timeout: float = 30.0  # a SYN the listener never answered
    established_timeout: float = 7440.0  # idle, RFC 5382's 2 h 4 min
    closing_timeout: float = 60.0  # after RST, or FIN both ways: covers TIME_WAIT
    rst_unknown: bool = True  # answer an app's segment of no session with a RST

    def __post_init__(self) -> None:
        if len(self.inet_addr) not in (4, 16) or len(self.client_addr) != len(self.inet_addr):
            raise ValueError("NAT addresses must both be IPv4 (4 bytes) or both IPv6 (16 bytes)")
        if self.inet_addr == self.client_addr:
            raise ValueError("virtual client address must differ from the TUN address")
        if not 1 <= self.port_min <= self.port_max <= 65535:
            raise ValueError("NAT port range must lie within 1..65535")


class Session:
    """One NAT'd flow. Mutable on purpose: the hot path stamps ``last`` per packet."""

    __slots__ = ("port", "up_key", "down_key", "last", "state")

    def __init__(self, port: int, up_key: bytes, down_key: bytes, now: float) -> None:
        self.port = port
        self.up_key = up_key  # A, D, a, d as on the wire (bytes 12..24)
        self.down_key = down_key  # I, V, L, n
        self.last = now
        self.state = 0

    def is_closing(self) -> bool:
        """True once a RST passed or both sides sent FIN."""
        return bool(self.state & _RST) or self.state & _CLOSED_BOTH == _CLOSED_BOTH

    def expires_at(self, cfg: NatConfig) -> float:
        """The time after which an idle session may be forgotten."""
        if self.is_closing():
            return self.last + cfg.closing_timeout
        if self.state & _ESTABLISHED:
            return self.last + cfg.established_timeout
        return self.last + cfg.syn_timeout


class NatTable:
    """Sessions keyed by wire bytes, NAT port allocation, expiry and counters."""

    def __init__(self, cfg: NatConfig) -> None:
        self.cfg = cfg
        # key (bytes 12..24 as on the wire) -> (replacement, ip adj, l4 adj, session, verdict)
        self._flows: dict[bytes, tuple[bytes, int, int, Session, int]] = {}
        self._ports: dict[int, Session] = {}
        self._cursor = cfg.port_max  # round robin: a freed port is reused as late as possible
        self._next_full_scan = float("-inf")
        # Another family's table sharing the listener's port space (lookup(port) must be unique).
        self.peer: NatTable | None = None
        self.reply: bytes = b""
        self.info: PacketInfo | None = None
        self.dropped_malformed = 0
        self.dropped_fragment = 0
        self.dropped_no_session = 0
        self.dropped_table_full = 0
        self.to_policy = 0
        self.sessions_opened = 0
        self.sessions_expired = 0

    # -- hot path ---------------------------------------------------------------

    def translate(self, buf: bytearray, off: int, end: int, now: float, partial: bool) -> int:
        """Rewrite the packet ``buf[off:end]`` in place and return a verdict.

        *partial* says the L4 checksum field holds a partial pseudo-header sum
        (virtio ``NEEDS_CSUM``). Never raises on bad input: such packets are
        counted and get ``DROP``.
        """
        if end - off >= 40:
            vihl, tot, frag, proto, ipck, key, doff, flags, l4ck = _V4_TCP.unpack_from(buf, off)
            if (
                vihl == 0x45
                and proto == 6
                and not frag & 0x3FFF  # neither MF nor a fragment offset
                and not flags & 7  # SYN/FIN/RST update session state: slow path
                and doff >= 0x50
                and 40 <= tot <= end - off
            ):
                e = self._flows.get(key)
                if e is not None:
                    new, ip_adj, l4_adj, s, verdict = e
                    # A partial sum covers only the pseudo header (addresses): the
                    # device sums the TCP header, new ports included, itself.
                    _CK_ADDRS.pack_into(buf, off + 10, (ipck - ip_adj) % 0xFFFF, new)
                    _CK.pack_into(
                        buf, off + 36, (l4ck + ip_adj - 1) % 0xFFFF + 1 if partial else (l4ck - l4_adj) % 0xFFFF
                    )
                    s.last = now
                    return verdict
        return self._slow(buf, off, end, now, partial)

    # -- slow path: new flows, state changes, IP options, everything odd ------------

    def _slow(self, buf: bytearray, off: int, end: int, now: float, partial: bool) -> int:
        try:
            info = parse(buf, off, end)
        except MalformedPacket:
            self.dropped_malformed += 1
            return DROP
        if info.is_fragment:
            # The kernel reassembles before TCP; our own stack never fragments TCP.
            self.dropped_fragment += 1
            return DROP
        if not self._is_plain_tcp(info):
            self.info = info
            self.to_policy += 1
            return POLICY
        key = self._key(buf, off, info)
        flags = info.tcp_flags
        e = self._flows.get(key)
        if e is not None and e[4] == UP and flags & (TCP_SYN | TCP_ACK) == TCP_SYN and e[3].is_closing():
            self._remove(e[3])  # the app reuses its port for a new connection
            e = None
        if e is None:
            return self._no_session(buf, off, end, info, key, now, partial)
        new, ip_adj, l4_adj, s, verdict = e
        if flags & (TCP_SYN | TCP_FIN | TCP_RST):
            _track(s, verdict, flags)
        self._rewrite(buf, off, info.header_len, new, ip_adj, l4_adj, partial)
        s.last = now
        return verdict

    # The family's layout: the IPv6 table overrides these three.

    def _is_plain_tcp(self, info: PacketInfo) -> bool:
        """A TCP segment this table translates (anything else goes to the policy)."""
        return info.version == 4 and info.protocol == PROTO_TCP

    def _key(self, buf: bytearray, off: int, info: PacketInfo) -> bytes:
        """The session key: addresses and ports as they sit on the wire."""
        l4 = off + info.header_len
        return bytes(buf[off + 12 : off + 20]) + bytes(buf[l4 : l4 + 4])

    def _rewrite(self, buf: bytearray, off: int, header_len: int, new: bytes, ip_adj: int, l4_adj: int,
                 partial: bool) -> None:
        """Write the new addresses and ports and adjust both checksums (RFC 1624)."""
        l4 = off + header_len
        buf[off + 12 : off + 20] = new[:8]
        buf[l4 : l4 + 4] = new[8:]
        c = (((buf[off + 10] << 8) | buf[off + 11]) - ip_adj) % 0xFFFF
        buf[off + 10 : off + 12] = c.to_bytes(2, "big")
        c = (buf[l4 + 16] << 8) | buf[l4 + 17]
        c = (c + ip_adj - 1) % 0xFFFF + 1 if partial else (c - l4_adj) % 0xFFFF
        buf[l4 + 16 : l4 + 18] = c.to_bytes(2, "big")

    def _no_session(
        self, buf: bytearray, off: int, end: int, info: PacketInfo, key: bytes, now: float, partial: bool
    ) -> int:
        cfg = self.cfg
        flags = info.tcp_flags
        if info.dst == cfg.client_addr or flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
            # A listener segment of a forgotten session, or an app segment that is
            # no new connection (e.g. after a restart): nothing to deliver it to.
            self.dropped_no_session += 1
            if flags & TCP_RST or info.dst == cfg.client_addr or not cfg.rst_unknown:
                return DROP
            self.reply = build_rst_reply(buf, off, info)
            return REPLY
        if info.src == cfg.client_addr or (info.dst == cfg.inet_addr and info.dport == cfg.listen_port):
            self.dropped_no_session += 1  # would loop back into the NAT
            return DROP
        port = self._alloc_port()
        # Full: make room from idle sessions first, but scan the table at most once per
        # FULL_SCAN_INTERVAL_S; a SYN flood against a full table must not cost a scan each.
        if port is None and now >= self._next_full_scan:
            self._next_full_scan = now + FULL_SCAN_INTERVAL_S
            if self.expire(now) or (self.peer is not None and self.peer.expire(now)):
                port = self._alloc_port()
        if port is None:
            self.dropped_table_full += 1
            self.reply = build_rst_reply(buf, off, info)
            return REPLY
        self._open(key, port, now)
        return self._slow(buf, off, end, now, partial)  # now with a session

    def _alloc_port(self) -> int | None:
        cfg = self.cfg
        ports = self._ports
        other = self.peer._ports if self.peer is not None else {}
        if len(ports) >= cfg.max_sessions or len(ports) + len(other) > cfg.port_max - cfg.port_min:
            return None  # full, or the shared port space is: no scan of the range
        p = self._cursor
        for _ in range(cfg.port_max - cfg.port_min + 1):  # bounded by the range
            p = p + 1 if p < cfg.port_max else cfg.port_min
            if p not in ports and p not in other:
                self._cursor = p
                return p
        return None

    def _open(self, up_key: bytes, port: int, now: float) -> Session:
        cfg = self.cfg
        pb = port.to_bytes(2, "big")
        lb = cfg.listen_port.to_bytes(2, "big")
        a = len(cfg.inet_addr)  # keys are src, dst, sport, dport for either family
        up_new = cfg.client_addr + cfg.inet_addr + pb + lb
        down_key = cfg.inet_addr + cfg.client_addr + lb + pb
        down_new = up_key[a : 2 * a] + up_key[0:a] + up_key[2 * a + 2 : 2 * a + 4] + up_key[2 * a : 2 * a + 2]
        s = Session(port, up_key, down_key, now)
        self._flows[up_key] = (up_new, adjustment(up_key[: 2 * a], up_new[: 2 * a]), adjustment(up_key, up_new), s, UP)
        self._flows[down_key] = (
            down_new,
            adjustment(down_key[: 2 * a], down_new[: 2 * a]),
            adjustment(down_key, down_new),
            s,
            DOWN,
        )
        self._ports[port] = s  # last: lookup() sees a session only once it is complete
        self.sessions_opened += 1
        return s

    def _remove(self, s: Session) -> None:
        self._ports.pop(s.port, None)
        self._flows.pop(s.up_key, None)
        self._flows.pop(s.down_key, None)

    # -- housekeeping and queries ----------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget sessions idle past their timeout at *now*; return how many."""
        cfg = self.cfg
        dead = [s for s in self._ports.values() if s.expires_at(cfg) <= now]
        for s in dead:
            self._remove(s)
        self.sessions_expired += len(dead)
        return len(dead)

    def lookup(self, port: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """``((orig_src, src_port), (orig_dst, dst_port))`` of NAT port *port*, or None.

        Safe from another thread while packets flow (one dict read, no lock).
        """
        s = self._ports.get(port)
        if s is None:
            return None
        k = s.up_key
        a = len(k) // 2 - 2
        return (format_addr(k[0:a]), int.from_bytes(k[2 * a : 2 * a + 2], "big")), (
            format_addr(k[a : 2 * a]),
            int.from_bytes(k[2 * a + 2 : 2 * a + 4], "big"),
        )

    def __len__(self) -> int:
        return len(self._ports)

    def counters(self) -> dict[str, int]:
        """Snapshot of the table's counters."""
        return {
            "sessions_open": len(self._ports),
            "sessions_opened": self.sessions_opened,
            "sessions_expired": self.sessions_expired,
            "dropped_malformed": self.dropped_malformed,
            "dropped_fragment": self.dropped_fragment,
            "dropped_no_session": self.dropped_no_session,
            "dropped_table_full": self.dropped_table_full,
            "to_policy": self.to_policy,
        }

    def __repr__(self) -> str:
        return f"<NatTable sessions={len(self._ports)} opened={self.sessions_opened}>"


def _track(s: Session, verdict: int, flags: int) -> None:
    """Advance the session's state on SYN/FIN/RST."""
    if flags & TCP_RST:
        s.state |= _RST
    if flags & TCP_FIN:
        s.state |= _FIN_UP if verdict == UP else _FIN_DOWN
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK and verdict == DOWN:
        s.state |= _ESTABLISHED
