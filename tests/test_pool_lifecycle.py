"""The pool's connection lifecycle (:class:`ConnectionSet`), pure: no sockets, no loop;
then the pool's task ownership at shutdown, on loopback.

Small fakes stand in for the connection objects (they pass the ``isinstance`` checks
and carry only what the lifecycle reads); the plan is the real one, counting the closes
it is told about, and ``close_later`` records what the set asks to close.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from http1_peers import Origin

from atlantic.pool.api import Endpoint, RequestHead
from atlantic.pool.conns import ConnectionSet
from atlantic.pool.errors import UpstreamError
from atlantic.pool.h2conn import H2Connection, H2Event
from atlantic.pool.http11 import H1Connection
from atlantic.pool.plan import PoolKey, PoolPlan
from atlantic.pool.pool import UpstreamPool

A = PoolKey("http://proxy-a:3128")
B = PoolKey("http://proxy-b:3128")
C = PoolKey("http://proxy-c:3128")


class CountingPlan(PoolPlan):
    """The real plan, counting ``on_closed`` per record (``release`` closing counts too)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.closes: Counter[int] = Counter()

    def on_closed(self, conn) -> None:
        self.closes[conn.id] += 1
        super().on_closed(conn)


class FakeH1(H1Connection):
    """An HTTP/1.1 connection that is only a peer-closed flag."""

    def __init__(self, peer_closed: bool = False) -> None:
        self.peer_closed = peer_closed

    def is_peer_closed(self) -> bool:
        return self.peer_closed


class FakeH2(H2Connection):
    """An HTTP/2 connection that is only its GOAWAY flag and the peer's stream limit."""

    def __init__(self, max_streams: int = 100) -> None:
        self.goaway = False
        self.limit = max_streams

    @property
    def max_streams(self) -> int:
        return self.limit


def make(**kw) -> tuple[ConnectionSet, CountingPlan, list]:
    """A set over a counting plan; the list collects what it asked to close."""
    plan = CountingPlan(**kw)
    closed: list = []
    return ConnectionSet(plan, closed.append), plan, closed


def opened(conns: ConnectionSet, key: PoolKey = A, now: float = 0.0, conn=None):
    """Place one request on a new connection and connect it: (record, connection)."""
    conns.plan.enqueue(key, now)
    (a,) = conns.plan.assign(now).assigned
    conn = conn if conn is not None else FakeH1()
    conns.add(a.conn, conn)
    h2 = isinstance(conn, H2Connection)
    conns.connected(a.conn, now, http2=h2, max_streams=conn.max_streams if h2 else 1)
    return a.conn, conn


def test_release_not_reusable_closes_once_and_the_plan_sees_one_close():
    """release(reusable=False): the connection is closed once and the plan is told once."""
    conns, plan, closed = make()
    rec, conn = opened(conns)
    conns.released(rec, 1.0, reusable=False)
    assert closed == [conn] and plan.closes[rec.id] == 1
    assert rec.is_closed() and len(conns) == 0 and conns.get(rec) is None


def test_release_reusable_keeps_the_connection_idle_and_open():
    """A reusable release leaves the connection open, idle and placed on again."""
    conns, plan, closed = make()
    rec, _ = opened(conns)
    conns.released(rec, 1.0, reusable=True)
    assert closed == [] and rec.is_idle() and not plan.closes
    plan.enqueue(A, 2.0)
    (a,) = plan.assign(2.0).assigned
    assert a.conn is rec and a.reused


def test_dropping_twice_is_idempotent():
    """A second drop neither closes again nor tells the plan again."""
    conns, plan, closed = make()
    rec, conn = opened(conns)
    conns.drop(rec)
    conns.drop(rec)
    assert closed == [conn] and plan.closes[rec.id] == 1


def test_release_after_drop_tells_the_plan_nothing_more():
    """A request finishing on a connection dropped under it: no second close anywhere."""
    conns, plan, closed = make()
    rec, conn = opened(conns)
    conns.drop(rec)
    conns.released(rec, 1.0, reusable=False)
    assert closed == [conn] and plan.closes[rec.id] == 1 and rec.active == 0


def test_h2_goaway_with_no_active_stream_drops_it():
    """GOAWAY on an HTTP/2 connection carrying nothing closes it at once, once."""
    conns, plan, closed = make()
    rec, conn = opened(conns, conn=FakeH2())
    conns.stream_done(rec, 1.0)
    conns.h2_event(rec, H2Event.GOAWAY)
    assert closed == [conn] and plan.closes[rec.id] == 1


def test_h2_goaway_with_an_active_stream_closes_after_the_last_stream():
    """GOAWAY mid-stream: no new streams; the connection closes when its last stream ends."""
    conns, plan, closed = make()
    rec, conn = opened(conns, conn=FakeH2())
    conn.goaway = True  # the connection sets this before it reports GOAWAY
    conns.h2_event(rec, H2Event.GOAWAY)
    assert closed == [] and not rec.is_available()
    conns.stream_done(rec, 1.0)
    assert closed == [conn] and plan.closes[rec.id] == 1


def test_h2_closed_event_forgets_without_closing_again():
    """A connection that closed itself is forgotten, the plan told once, nothing closed by us."""
    conns, plan, closed = make()
    rec, _ = opened(conns, conn=FakeH2())
    conns.h2_event(rec, H2Event.CLOSED)
    conns.drop(rec)
    assert closed == [] and plan.closes[rec.id] == 1 and len(conns) == 0


def test_h2_closed_event_after_a_drop_is_not_a_second_close():
    """Our drop makes the connection report CLOSED: the plan still sees one close."""
    conns, plan, closed = make()
    rec, conn = opened(conns, conn=FakeH2())
    conns.drop(rec)
    conns.h2_event(rec, H2Event.CLOSED)
    assert closed == [conn] and plan.closes[rec.id] == 1


def test_h2_settings_update_the_stream_limit():
    """The peer's new SETTINGS_MAX_CONCURRENT_STREAMS reaches the plan."""
    conns, _, _ = make()
    rec, conn = opened(conns, conn=FakeH2(max_streams=10))
    conn.limit = 3
    conns.h2_event(rec, H2Event.SETTINGS)
    assert rec.max_streams == 3


def test_connected_after_a_drop_does_not_reopen_the_record():
    """A connection dropped while connecting stays closed when its handshake ends."""
    conns, plan, _ = make()
    plan.enqueue(A, 0.0)
    (a,) = plan.assign(0.0).assigned
    conns.add(a.conn, FakeH2())
    conns.drop(a.conn)
    conns.connected(a.conn, 1.0, http2=True, max_streams=100)
    assert a.conn.is_closed() and a.conn not in plan.conns


def test_expire_closes_idle_past_timeout_and_idle_peer_closed_ones_once():
    """Expiry closes the timed-out idle connection and the idle one the peer closed, once each."""
    conns, plan, closed = make(idle_timeout=10.0)
    old, old_conn = opened(conns, A, 0.0)
    conns.released(old, 0.0, reusable=True)
    stale, stale_conn = opened(conns, B, 5.0, conn=FakeH1(peer_closed=True))
    conns.released(stale, 5.0, reusable=True)
    busy, _ = opened(conns, C, 6.0, conn=FakeH1(peer_closed=True))  # in use: not ours to judge
    assert conns.expire(10.0) == 2
    assert closed == [old_conn, stale_conn]
    assert plan.closes[old.id] == 1 and plan.closes[stale.id] == 1 and not busy.is_closed()
    assert conns.expire(11.0) == 0 and len(closed) == 2


def test_take_hands_the_connection_over_open():
    """A fresh connection taken for a tunnel leaves the pool open; the plan sees one close."""
    conns, plan, closed = make()
    rec, conn = opened(conns)
    assert conns.take(rec) is conn
    conns.drop(rec)
    assert closed == [] and plan.closes[rec.id] == 1 and len(conns) == 0


def test_take_idle_returns_the_idle_http1_connection_open():
    """An idle keep-alive connection becomes a CONNECT tunnel: out of the pool, not closed."""
    conns, plan, closed = make()
    rec, conn = opened(conns)
    assert conns.take_idle(A) is None  # still carrying its request
    conns.released(rec, 1.0, reusable=True)
    assert conns.take_idle(A) is conn
    assert closed == [] and rec.is_closed() and len(conns) == 0 and conns.take_idle(A) is None


def test_evicted_connections_close_once():
    """The plan evicts an idle connection for room: its object is closed, the plan not told twice."""
    conns, plan, closed = make(max_total=1)
    rec, conn = opened(conns, A)
    conns.released(rec, 1.0, reusable=True)
    plan.enqueue(B, 2.0)
    result = plan.assign(2.0)
    conns.drop_all(result.to_close)
    assert result.to_close == (rec,) and closed == [conn] and plan.closes[rec.id] == 0


def test_close_all_forgets_everything_and_tells_the_plan_once_each():
    """close_all returns every connection for closing; later events close nothing more."""
    conns, plan, closed = make()
    a, conn_a = opened(conns, A)
    b, conn_b = opened(conns, B, conn=FakeH2())
    assert conns.close_all() == [conn_a, conn_b]
    conns.drop(a)
    conns.h2_event(b, H2Event.CLOSED)
    assert closed == [] and plan.closes == Counter({a.id: 1, b.id: 1}) and len(conns) == 0
    assert "0 live" in repr(conns)


# ---- the pool's tasks at shutdown (loopback) ----

def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(10):
            return await coro
    return asyncio.run(bounded())


def get(port: int, path: str = "/echo") -> RequestHead:
    """A GET for the loopback origin on ``port``."""
    ep = Endpoint("http", "127.0.0.1", port)
    return RequestHead("GET", ep, path, (("Host", ep.authority),))


async def fetch(pool: UpstreamPool, head: RequestHead) -> bytes:
    """The whole body of one response (the connection goes back to the pool)."""
    resp = await pool.request(head, None)
    body = b""
    while piece := await resp.read():
        body += piece
    await resp.aclose()
    return body


def test_aclose_closes_idle_connections_and_leaves_no_task_behind():
    """aclose: the idle keep-alive connection is closed and every pool task has ended."""
    async def main():
        async with Origin() as origin:
            pool = UpstreamPool("direct")
            await fetch(pool, get(origin.port))
            assert len(pool.conns) == 1
            await pool.aclose()
            assert len(pool.conns) == 0 and pool.counters()["connections_open"] == 0
            assert [t for t in asyncio.all_tasks() if t.get_name().startswith("pool")] == []

    run(main())


def test_closed_pool_refuses_new_requests_in_one_line():
    """After aclose a request fails at once with a one-line UpstreamError."""
    async def main():
        pool = UpstreamPool("direct")
        await pool.start()
        await pool.aclose()
        with pytest.raises(UpstreamError) as info:
            await pool.request(get(9), None)
        assert "closed" in str(info.value) and "\n" not in str(info.value)

    run(main())


def test_drop_idle_closes_the_idle_ones_and_leaves_busy_ones_working():
    """Draining (another upstream took over): idle connections close once, a busy one stays."""
    conns, plan, closed = make()
    busy_rec, busy = opened(conns)
    idle_rec, idle = opened(conns)  # a second connection: the first is busy
    conns.released(idle_rec, 1.0, reusable=True)
    assert conns.drop_idle() == 1
    assert closed == [idle] and plan.closes[idle_rec.id] == 1
    assert conns.get(busy_rec) is busy and not busy_rec.is_closed()
