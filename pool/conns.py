"""The pool's live connections: plan records <-> connection objects, one call per event.

One room, no I/O of its own. :class:`ConnectionSet` owns the map from each
:class:`~atlantic.pool.plan.ConnRecord` to its :class:`H1Connection` or
:class:`H2Connection`, and is the only one that tells the plan a connection's life
(connected, released, HTTP/2 events, gone). Each event calls the plan once, and a
connection is closed once, however many events say it is gone: the plan's record state
(``is_closed()``) says whether the plan knows already, the map whether the object is
still ours to close.

Closing is asynchronous, so it is handed out: ``close_later(conn)`` schedules
``conn.aclose()`` (the pool runs it in its TaskGroup). No clock here: ``now`` comes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from atlantic.pool.h2conn import H2Connection, H2Event
from atlantic.pool.http11 import H1Connection
from atlantic.pool.plan import ConnRecord, PoolKey, PoolPlan

__all__ = ["Connection", "ConnectionSet"]

Connection = H1Connection | H2Connection


class ConnectionSet:
    """Every live upstream connection of one pool, and the plan that places requests on them.

    ``close_later(conn)`` must arrange for ``await conn.aclose()`` soon; it is called at
    most once per connection. ``repr`` shows the plan's counts and the live objects.
    """

    __slots__ = ("plan", "_live", "_close_later")

    def __init__(self, plan: PoolPlan, close_later: Callable[[Connection], None]) -> None:
        self.plan = plan
        self._live: dict[ConnRecord, Connection] = {}
        self._close_later = close_later

    def __len__(self) -> int:
        return len(self._live)

    def __repr__(self) -> str:
        return f"<ConnectionSet {len(self._live)} live, plan {self.plan!r}>"

    def get(self, rec: ConnRecord) -> Connection | None:
        """The connection object for ``rec``, or None once it is gone (or not made yet)."""
        return self._live.get(rec)

    def next_expiry(self) -> float | None:
        """When the next idle connection expires, or None (see ``PoolPlan.next_expiry``)."""
        return self.plan.next_expiry()

    # ---- events, one call each ----
    def add(self, rec: ConnRecord, conn: Connection) -> None:
        """``conn`` exists for ``rec`` (HTTP/2: before its handshake, so its events find it)."""
        self._live[rec] = conn

    def connected(self, rec: ConnRecord, now: float, *, http2: bool, max_streams: int = 1) -> None:
        """The connection for ``rec`` is ready (``max_streams`` from the peer's SETTINGS).

        Nothing if it was dropped while connecting: a closed record never reopens.
        """
        if not rec.is_closed():
            self.plan.on_connected(rec, now, http2=http2, max_streams=max_streams)

    def released(self, rec: ConnRecord, now: float, *, reusable: bool) -> None:
        """A request on ``rec`` finished; not ``reusable``: the connection is closed (once)."""
        # A record already closed only gives its slot back: the plan knows it is gone.
        self.plan.release(rec, now, reusable=reusable or rec.is_closed())
        if not reusable:
            self.drop(rec)

    def stream_done(self, rec: ConnRecord, now: float) -> None:
        """An HTTP/2 stream on ``rec`` closed; after GOAWAY the last one closes the connection."""
        self.plan.release(rec, now, reusable=True)
        conn = self._live.get(rec)
        if isinstance(conn, H2Connection) and conn.goaway and rec.active == 0:
            self.drop(rec)

    def h2_event(self, rec: ConnRecord, event: H2Event) -> None:
        """What the HTTP/2 connection of ``rec`` reported (settings, GOAWAY, closed)."""
        if event is H2Event.SETTINGS:
            conn = self._live.get(rec)
            if isinstance(conn, H2Connection):
                self.plan.update_max_streams(rec, conn.max_streams)
        elif event is H2Event.GOAWAY:
            self.plan.on_goaway(rec)
            if rec.active == 0:
                self.drop(rec)
        elif event is H2Event.CLOSED:
            self._live.pop(rec, None)  # it closed itself: nothing left to close
            if not rec.is_closed():
                self.plan.on_closed(rec)

    def drop(self, rec: ConnRecord) -> None:
        """Close the connection of ``rec`` and forget it. Idempotent: a second call does nothing."""
        if not rec.is_closed():
            self.plan.on_closed(rec)
        conn = self._live.pop(rec, None)
        if conn is not None:
            self._close_later(conn)

    def drop_all(self, recs: Iterable[ConnRecord]) -> None:
        """:meth:`drop` each of ``recs`` (e.g. the idle ones an assignment pass evicted)."""
        for rec in recs:
            self.drop(rec)

    def take(self, rec: ConnRecord) -> Connection | None:
        """Remove ``rec``'s connection from the pool for good, open (it becomes a tunnel)."""
        if not rec.is_closed():
            self.plan.on_closed(rec)
        return self._live.pop(rec, None)

    def take_idle(self, key: PoolKey) -> H1Connection | None:
        """The most recently used idle HTTP/1.1 connection for ``key``, out of the pool (for a
        CONNECT), or None."""
        rec = self.plan.take_idle(key)
        if rec is None:
            return None
        conn = self._live.pop(rec, None)
        return conn if isinstance(conn, H1Connection) else None

    def expire(self, now: float) -> int:
        """Close the idle connections past the idle timeout (or drained after GOAWAY), and
        idle HTTP/1.1 ones the peer closed or sent unsolicited bytes on; how many."""
        gone = self.plan.expire(now)  # the plan closed these already
        for rec in gone:
            self.drop(rec)
        stale = [rec for rec, conn in self._live.items()
                 if isinstance(conn, H1Connection) and rec.is_idle() and conn.is_peer_closed()]
        for rec in stale:
            self.drop(rec)
        return len(gone) + len(stale)

    def drop_idle(self) -> int:
        """Close every connection carrying nothing now (busy ones finish their work); how many."""
        idle = [rec for rec in self._live if rec.is_idle()]
        self.drop_all(idle)
        return len(idle)

    def close_all(self) -> list[Connection]:
        """Forget every connection (the plan sees each closed once); the caller closes them."""
        conns = list(self._live.items())
        self._live.clear()
        for rec, _ in conns:
            if not rec.is_closed():
                self.plan.on_closed(rec)
        return [conn for _, conn in conns]
