"""Pool planning, pure: which waiting request goes on which upstream connection.

No asyncio, no sockets, no clock: every method that needs the time takes ``now``.
The async adapter (:mod:`.pool`) enqueues a :class:`Waiter` per request, runs
:meth:`PoolPlan.assign` after anything changes, opens the connections the plan asks
for, and reports back (``on_connected``, ``release``, ``on_closed``).

Unlike httpcore's pool: only connections with no work count as idle; a connection
given to a request (even one still connecting) is never closed to make room; the time
always comes in as an argument.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Assignment", "ConnRecord", "ConnState", "Plan", "PoolKey", "PoolPlan", "Waiter"]

DEFAULT_IDLE_TIMEOUT_S = 90.0


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a connection is for: never reused across proxies, credentials or (direct) origins.

    ``upstream`` is the proxy endpoint (``http://host:port``) or ``direct``;
    ``credentials`` the rendered ``Proxy-Authorization`` value (or ``""``);
    ``origin`` is ``host:port`` for direct connections, ``""`` through a proxy.
    """

    upstream: str
    credentials: str = ""
    origin: str = ""


class ConnState(enum.Enum):
    """Life of one upstream connection as the plan sees it."""

    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class ConnRecord:
    """One upstream connection's bookkeeping (mutable; owned by :class:`PoolPlan`)."""

    id: int
    key: PoolKey
    created: float
    state: ConnState = ConnState.CONNECTING
    http2: bool = False
    max_streams: int = 1
    active: int = 0
    last_used: float = 0.0
    idle_since: float | None = None
    goaway: bool = False
    served: int = 0  # requests assigned over the connection's life (>0 => next one is reuse)

    def can_handle(self, key: PoolKey) -> bool:
        """True when this connection may carry a request for ``key``."""
        return self.key == key

    def is_available(self) -> bool:
        """True when a new request (or stream) may be placed on it now."""
        return (self.state is ConnState.READY and not self.goaway
                and self.active < (self.max_streams if self.http2 else 1))

    def is_idle(self) -> bool:
        """True when open and carrying nothing (only these may expire or be evicted)."""
        return self.state is ConnState.READY and self.active == 0

    def is_closed(self) -> bool:
        """True once the connection is gone (it is then dropped from the plan)."""
        return self.state is ConnState.CLOSED

    def has_expired(self, now: float, idle_timeout: float) -> bool:
        """True when idle for ``idle_timeout`` seconds, or idle after GOAWAY."""
        if not self.is_idle() or self.idle_since is None:
            return False
        return self.goaway or now - self.idle_since >= idle_timeout


@dataclass(eq=False, slots=True)
class Waiter:
    """A request waiting for a connection; ``conn`` is set by the assignment pass."""

    id: int
    key: PoolKey
    since: float
    conn: ConnRecord | None = None
    reused: bool = False  # placed on a connection that had served a request already
    is_new: bool = False  # the plan created ``conn`` for this waiter: the adapter opens it


@dataclass(frozen=True, slots=True)
class Assignment:
    """One waiter placed on one connection (``is_new``: open it first)."""

    waiter: Waiter
    conn: ConnRecord
    is_new: bool
    reused: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """What one assignment pass decided: placements and idle connections to close."""

    assigned: tuple[Assignment, ...] = ()
    to_close: tuple[ConnRecord, ...] = ()


@dataclass(slots=True)
class PoolPlan:
    """Connections and waiters of the whole pool, and the one assignment pass.

    ``max_per_key``: connections per pool key (requests beyond wait in order);
    ``max_total``: all connections, idle ones of other keys are evicted (least recently
    used first) to make room; ``idle_timeout``: seconds before an idle one is closed.
    """

    max_per_key: int = 128
    max_total: int = 256
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    conns: list[ConnRecord] = field(default_factory=list)
    waiting: deque[Waiter] = field(default_factory=deque)
    h2_keys: set[PoolKey] = field(default_factory=set)  # keys whose last connection spoke h2
    _next_id: int = 1

    def enqueue(self, key: PoolKey, now: float, *, front: bool = False) -> Waiter:
        """Add a request waiting for a connection (``front``: a retry keeps its place)."""
        w = Waiter(self._new_id(), key, now)
        (self.waiting.appendleft if front else self.waiting.append)(w)
        return w

    def cancel(self, waiter: Waiter, now: float) -> None:
        """The request gave up before it was placed, or after (its stream is released)."""
        if waiter in self.waiting:
            self.waiting.remove(waiter)
        elif waiter.conn is not None and not waiter.is_new:
            self.release(waiter.conn, now, reusable=True)

    def assign(self, now: float) -> Plan:
        """One synchronous pass: place every waiter that can be placed, in order."""
        assigned: list[Assignment] = []
        to_close: list[ConnRecord] = []
        still: deque[Waiter] = deque()
        # A key that found no room stays without room for the rest of this pass (placing
        # other waiters only uses room up): its later waiters skip the scan of every
        # connection, so a queue of 1,000 costs one scan per key, not one per waiter.
        blocked: set[PoolKey] = set()
        while self.waiting:
            w = self.waiting.popleft()
            a = None if w.key in blocked else self._place(w, now, to_close)
            if a is None:
                blocked.add(w.key)
                still.append(w)
            else:
                assigned.append(a)
        self.waiting = still
        return Plan(tuple(assigned), tuple(to_close))

    def _place(self, w: Waiter, now: float, to_close: list[ConnRecord]) -> Assignment | None:
        live = [c for c in self.conns if c.can_handle(w.key) and not c.is_closed()]
        available = [c for c in live if c.is_available()]
        if available:
            conn = max(available, key=lambda c: (c.last_used, c.id))  # most recently used
            return self._give(w, conn, now, is_new=False)
        # An h2 connection on its way will take this one as a stream: wait, do not open more.
        if w.key in self.h2_keys and any(c.state is ConnState.CONNECTING for c in live):
            return None
        if len([c for c in live if not c.goaway]) >= self.max_per_key:
            return None
        open_now = [c for c in self.conns if not c.is_closed() and c not in to_close]
        if len(open_now) >= self.max_total:
            idle = [c for c in open_now if c.is_idle()]
            if not idle:
                return None
            victim = min(idle, key=lambda c: (c.last_used, c.id))
            victim.state = ConnState.CLOSED
            to_close.append(victim)
            self.conns.remove(victim)
        conn = ConnRecord(self._new_id(), w.key, created=now, last_used=now)
        self.conns.append(conn)
        return self._give(w, conn, now, is_new=True)

    def _give(self, w: Waiter, conn: ConnRecord, now: float, *, is_new: bool) -> Assignment:
        reused = conn.served > 0
        conn.active += 1
        conn.served += 1
        conn.last_used = now
        conn.idle_since = None
        w.conn, w.is_new, w.reused = conn, is_new, reused
        return Assignment(w, conn, is_new, reused)

    def on_connected(self, conn: ConnRecord, now: float, *, http2: bool, max_streams: int = 100) -> None:
        """The connection is up; ``http2`` from ALPN, ``max_streams`` from the peer's SETTINGS."""
        conn.state = ConnState.READY
        conn.http2 = http2
        conn.max_streams = max(1, max_streams) if http2 else 1
        if http2:
            self.h2_keys.add(conn.key)
        else:
            self.h2_keys.discard(conn.key)

    def update_max_streams(self, conn: ConnRecord, max_streams: int) -> None:
        """The peer changed SETTINGS_MAX_CONCURRENT_STREAMS."""
        conn.max_streams = max(1, max_streams)

    def on_goaway(self, conn: ConnRecord) -> None:
        """GOAWAY: no new streams here; open ones drain, then it expires at once."""
        conn.goaway = True

    def release(self, conn: ConnRecord, now: float, *, reusable: bool) -> None:
        """A request (stream) on ``conn`` finished; ``reusable`` False closes it (h1)."""
        conn.active = max(0, conn.active - 1)
        conn.last_used = now
        if not reusable and not conn.http2:
            self.on_closed(conn)
            return
        if conn.active == 0 and conn.state is ConnState.READY:
            conn.idle_since = now

    def take_idle(self, key: PoolKey) -> ConnRecord | None:
        """Remove and return the most recently used idle HTTP/1.1 connection for ``key``.

        For a CONNECT: the connection becomes a tunnel and leaves the pool.
        """
        idle = [c for c in self.conns if c.can_handle(key) and c.is_idle() and not c.http2
                and not c.goaway]
        if not idle:
            return None
        conn = max(idle, key=lambda c: (c.last_used, c.id))
        self.conns.remove(conn)
        conn.state = ConnState.CLOSED
        return conn

    def on_closed(self, conn: ConnRecord) -> None:
        """The connection is gone (peer closed, error, or we closed it)."""
        conn.state = ConnState.CLOSED
        if conn in self.conns:
            self.conns.remove(conn)

    def expire(self, now: float) -> list[ConnRecord]:
        """Idle connections past the idle timeout (or drained after GOAWAY): close these."""
        gone = [c for c in self.conns if c.has_expired(now, self.idle_timeout)]
        for c in gone:
            self.on_closed(c)
        return gone

    def next_expiry(self) -> float | None:
        """When the next idle connection expires (for the adapter's timer), or None."""
        times = [c.idle_since + self.idle_timeout for c in self.conns
                 if c.is_idle() and c.idle_since is not None]
        return min(times, default=None)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def __repr__(self) -> str:
        active_req = sum(c.active for c in self.conns)
        idle = sum(1 for c in self.conns if c.is_idle())
        return (f"<Pool [requests: {active_req} active, {len(self.waiting)} queued | "
                f"connections: {len(self.conns) - idle} active, {idle} idle]>")
