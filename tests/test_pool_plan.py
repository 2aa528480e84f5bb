"""The pool's pure core: assignment, reuse order, limits, expiry, repr, counters, keep-alive."""

from __future__ import annotations

from atlantic.pool.counters import Counters, percentile
from atlantic.pool.keepalive import KeepAlive, PingKind
from atlantic.pool.plan import ConnState, PoolKey, PoolPlan

A = PoolKey("http://p:3128", "Basic YTpi")
B = PoolKey("http://p:3128", "Basic Yzpk")  # other credentials: another session


def _open(plan: PoolPlan, key: PoolKey, now: float, http2: bool = False, streams: int = 100):
    w = plan.enqueue(key, now)
    (a,) = plan.assign(now).assigned
    assert a.is_new and a.waiter is w
    plan.on_connected(a.conn, now, http2=http2, max_streams=streams)
    return a.conn


def test_first_request_opens_a_connection_and_repr_counts_it():
    """No connection: the pass opens one for the waiter; repr shows 1 active request/conn."""
    plan = PoolPlan()
    plan.enqueue(A, 0.0)
    assert repr(plan) == "<Pool [requests: 0 active, 1 queued | connections: 0 active, 0 idle]>"
    (a,) = plan.assign(0.0).assigned
    assert a.is_new and not a.reused and a.conn.state is ConnState.CONNECTING
    assert repr(plan) == "<Pool [requests: 1 active, 0 queued | connections: 1 active, 0 idle]>"


def test_released_connection_is_idle_and_reused_most_recent_first():
    """Idle connections are reused, the most recently used first; reuse is flagged."""
    plan = PoolPlan()
    c1 = _open(plan, A, 0.0)
    c2 = _open(plan, A, 1.0)
    plan.release(c1, 2.0, reusable=True)
    plan.release(c2, 3.0, reusable=True)
    assert repr(plan) == "<Pool [requests: 0 active, 0 queued | connections: 0 active, 2 idle]>"
    plan.enqueue(A, 4.0)
    (a,) = plan.assign(4.0).assigned
    assert a.conn is c2 and a.reused and not a.is_new


def test_busy_http1_connection_is_not_shared_and_limit_queues():
    """HTTP/1.1 carries one request at a time; beyond max_per_key requests wait in order."""
    plan = PoolPlan(max_per_key=2)
    c1, c2 = _open(plan, A, 0), _open(plan, A, 0)
    w3 = plan.enqueue(A, 1)
    assert plan.assign(1).assigned == ()
    assert repr(plan) == "<Pool [requests: 2 active, 1 queued | connections: 2 active, 0 idle]>"
    plan.release(c1, 2, reusable=True)
    (a,) = plan.assign(2).assigned
    assert a.waiter is w3 and a.conn is c1 and a.reused
    assert c2.active == 1


def test_keys_never_share_connections():
    """Other credentials (another sticky session) never reuse a connection."""
    plan = PoolPlan()
    c1 = _open(plan, A, 0)
    plan.release(c1, 1, reusable=True)
    plan.enqueue(B, 2)
    (a,) = plan.assign(2).assigned
    assert a.is_new and a.conn is not c1 and not c1.can_handle(B)


def test_h2_connection_takes_streams_up_to_max_concurrent():
    """An h2 connection carries max_streams requests at once, then another one opens."""
    plan = PoolPlan()
    c = _open(plan, A, 0, http2=True, streams=3)
    for _ in range(2):
        plan.enqueue(A, 1)
    placed = plan.assign(1).assigned
    assert [x.conn for x in placed] == [c, c] and all(x.reused for x in placed)
    plan.enqueue(A, 2)
    (a,) = plan.assign(2).assigned
    assert a.is_new and a.conn is not c


def test_waiters_wait_for_a_connecting_h2_connection_instead_of_opening_more():
    """A key known to speak h2 with a connection on its way queues, then rides it as streams."""
    plan = PoolPlan()
    c = _open(plan, A, 0, http2=True)
    plan.on_closed(c)
    plan.enqueue(A, 1)
    (first,) = plan.assign(1).assigned
    plan.enqueue(A, 1)
    plan.enqueue(A, 1)
    assert plan.assign(1).assigned == ()
    plan.on_connected(first.conn, 2, http2=True, max_streams=10)
    assert [x.conn for x in plan.assign(2).assigned] == [first.conn, first.conn]


def test_goaway_stops_new_streams_and_expires_when_drained():
    """After GOAWAY no new stream goes there; once idle it expires at once."""
    plan = PoolPlan()
    c = _open(plan, A, 0, http2=True)
    plan.on_goaway(c)
    plan.enqueue(A, 1)
    (a,) = plan.assign(1).assigned
    assert a.is_new
    assert plan.expire(1.5) == []  # still has the first stream
    plan.release(c, 2, reusable=True)
    assert plan.expire(2) == [c] and c.is_closed()


def test_idle_expiry_uses_the_time_passed_in():
    """Idle connections expire after idle_timeout seconds of idleness, not before."""
    plan = PoolPlan(idle_timeout=90)
    c = _open(plan, A, 0)
    plan.release(c, 10, reusable=True)
    assert not c.has_expired(99.9, 90) and plan.expire(99.9) == []
    assert plan.next_expiry() == 100
    assert plan.expire(100) == [c] and plan.conns == []


def test_active_connections_never_expire():
    """A connection carrying a request is never idle, so never expired or evicted."""
    plan = PoolPlan(idle_timeout=1)
    c = _open(plan, A, 0)
    assert not c.is_idle() and plan.expire(1000) == []


def test_connection_assigned_while_connecting_is_never_evicted():
    """At max_total, only idle connections are evicted; a connecting one (assigned) is kept."""
    plan = PoolPlan(max_total=2)
    plan.enqueue(A, 0)
    (connecting,) = plan.assign(0).assigned
    c2 = _open(plan, A, 0)
    plan.release(c2, 1, reusable=True)
    plan.enqueue(B, 2)
    result = plan.assign(2)
    assert result.to_close == (c2,)
    assert connecting.conn in plan.conns and not connecting.conn.is_closed()
    plan.enqueue(B, 3)
    assert plan.assign(3).assigned == ()  # nothing idle left to evict: wait


def test_not_reusable_release_closes_http1_connection():
    """A response that forbids keep-alive (or was cut short) closes the HTTP/1.1 connection."""
    plan = PoolPlan()
    c = _open(plan, A, 0)
    plan.release(c, 1, reusable=False)
    assert c.is_closed() and plan.conns == []


def test_cancel_removes_a_queued_waiter():
    """A request that gives up while queued leaves the queue."""
    plan = PoolPlan(max_per_key=1)
    _open(plan, A, 0)
    w = plan.enqueue(A, 1)
    plan.cancel(w, 2)
    assert len(plan.waiting) == 0


def test_take_idle_hands_an_http1_connection_to_a_tunnel():
    """A CONNECT may consume an idle keep-alive connection; it leaves the pool."""
    plan = PoolPlan()
    c = _open(plan, A, 0)
    assert plan.take_idle(A) is None  # busy
    plan.release(c, 1, reusable=True)
    assert plan.take_idle(A) is c and plan.conns == []


def test_counters_percentiles_over_a_bounded_window():
    """TTFB percentiles are nearest-rank over the last `window` samples only."""
    c = Counters(window=100)
    for i in range(1, 201):
        c.record_ttfb(0.0, i / 1000)
    snap = c.snapshot()
    assert (snap["ttfb_ms_p50"], snap["ttfb_ms_p95"], snap["ttfb_ms_p99"]) == (150.0, 195.0, 199.0)
    assert Counters().snapshot()["ttfb_ms_p50"] is None
    assert percentile([5.0], 99) == 5.0


def test_keepalive_pings_after_silence_and_declares_dead_without_ack():
    """PING after `interval` s without frames; dead if no ACK within `timeout` s."""
    k = KeepAlive(0.0, interval=20, timeout=10)
    assert k.due(5).kind is PingKind.WAIT and k.due(5).wait == 15
    assert k.due(20).kind is PingKind.PING
    k.on_ping_sent(20)
    assert k.due(29).kind is PingKind.WAIT
    assert k.due(30).kind is PingKind.DEAD
    k.on_activity(25)
    assert k.due(30).kind is PingKind.WAIT


def test_a_long_queue_for_a_full_key_is_placed_in_order_without_a_scan_each():
    """1,000 waiters on a key at its limit: the pass keeps them all queued in order, and the
    next release places exactly the oldest one."""
    plan = PoolPlan(max_per_key=2)
    conns = [_open(plan, A, 0.0), _open(plan, A, 0.0)]
    waiters = [plan.enqueue(A, 1.0) for _ in range(1000)]
    assert plan.assign(1.0).assigned == ()
    assert list(plan.waiting) == waiters
    plan.release(conns[0], 2.0, reusable=True)
    (a,) = plan.assign(2.0).assigned
    assert a.waiter is waiters[0] and a.conn is conns[0]
    assert len(plan.waiting) == 999
