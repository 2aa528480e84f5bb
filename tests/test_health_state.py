"""Upstream health state, pure: failover at once, failback after recovery and hold, no flap,
passive signals only ask for (spaced) probes, exit checks, cheap snapshots."""

from __future__ import annotations

import ast
import heapq
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlantic.health.signals import PassiveSignal
from atlantic.health.state import HealthConfig, HealthMachine, UpstreamState

UP, DOWN, UNKNOWN = UpstreamState.UP, UpstreamState.DOWN, UpstreamState.UNKNOWN
ROOT = Path(__file__).resolve().parent.parent


def drive(m: HealthMachine, start: float, end: float, ok, latency: float = 0.05):
    """The prober loop: probe what is due, answer ``ok(i, t)`` after ``latency``.

    Returns the changes of the active upstream as ``(time, active)``.
    """
    t, pending, changes, last = start, [], [], m.snapshot(start).active
    while True:
        wake = t + m.next_wakeup(t)
        if min(wake, pending[0][0] if pending else math.inf) > end:
            return changes
        if pending and pending[0][0] <= wake:
            t, i, good = heapq.heappop(pending)
            m.probe_result(i, good, t, latency if good else None, None if good else "refused")
        else:
            t = wake
            for i in m.due(t):
                heapq.heappush(pending, (t + latency, i, ok(i, t)))
        if m.snapshot(t).active != last:
            last = m.snapshot(t).active
            changes.append((round(t, 2), last))


def both_up() -> HealthMachine:
    """Two upstreams, both probed good once at t=0 (answers at 0.05)."""
    m = HealthMachine(2)
    assert m.due(0.0) == (0, 1)
    m.probe_result(0, True, 0.05, 0.05)
    m.probe_result(1, True, 0.05, 0.05)
    return m


def test_start_primary_active_while_unknown_and_every_upstream_due():
    """Nothing probed yet: the primary is active (not all down), every upstream is due now."""
    m = HealthMachine(3)
    s = m.snapshot(0.0)
    assert (s.active, s.all_down, s.failovers) == (0, False, 0)
    assert [u.state for u in s.upstreams] == [UNKNOWN] * 3
    assert repr(m) == "<Health [active: 0, failovers: 0 | 0: unknown, 1: unknown, 2: unknown]>"
    assert m.next_wakeup(0.0) == 0.0 and m.due(0.0) == (0, 1, 2)
    assert m.due(0.1) == ()  # handed out already: no second probe while these run


def test_refused_primary_is_down_after_the_fast_retry_and_the_standby_takes_over_at_once():
    """Refused twice (0.5 s apart): DOWN ~0.5 s after the first failure, standby active."""
    m = both_up()
    assert m.next_wakeup(0.05) == pytest.approx(30.0)  # the active one; standby at 120 s
    assert m.due(30.05) == (0,)
    m.probe_result(0, False, 30.06, reason="connection refused")
    s = m.snapshot(30.06)
    assert (s.active, s.upstreams[0].state, s.upstreams[0].consecutive_failures) == (0, UP, 1)
    assert m.next_wakeup(30.06) == pytest.approx(0.5)
    assert m.due(30.56) == (0,)
    m.probe_result(0, False, 30.57, reason="connection refused")
    s = m.snapshot(30.57)
    assert (s.active, s.failovers, s.all_down) == (1, 1, False)
    assert s.upstreams[0].state is DOWN and s.upstreams[0].down_since == 30.57
    assert s.upstreams[0].last_reason == "connection refused" and s.upstreams[0].last_ok is False
    assert repr(m) == "<Health [active: 1, failovers: 1 | 0: down, 1: up]>"


def test_blackholed_primary_takes_the_same_path_and_passive_timeouts_hurry_the_retry():
    """Probes time out (the prober reports after its 5 s timeout): DOWN after two, standby
    active; a passive timeout during the probe makes the retry start at once."""
    m = both_up()
    assert m.due(30.05) == (0,)
    m.passive(0, PassiveSignal.CONNECT_TIMEOUT, 31.0)
    assert m.due(33.0) == ()  # the probe in flight will answer
    m.probe_result(0, False, 35.05, reason="timeout")
    assert m.next_wakeup(35.05) == 0.0 and m.due(35.05) == (0,)
    m.probe_result(0, False, 40.05, reason="timeout")
    s = m.snapshot(40.05)
    assert s.active == 1 and s.upstreams[0].state is DOWN


def test_recovery_needs_recover_successes_then_the_hold_before_failback():
    """Primary out 100..700 s: failover at once; back UP after 3 good probes (standby pace),
    active again only on a good probe after 60 s UP with no failure."""
    m = HealthMachine(2)
    changes = drive(m, 0.0, 1200.0, lambda i, t: not (i == 0 and 100 < t < 700))
    # probes are spaced from each result (0.05 s later): 120.2 and 120.75 fail
    assert changes == [(120.8, 1), (1021.25, 0)]
    v = m.snapshot(1200.0).upstreams[0]
    assert v.state is UP and v.up_since == pytest.approx(961.15)  # 721, 841, 961: 3 good
    assert 1021.25 - v.up_since >= HealthConfig().failback_hold_s
    assert m.snapshot(1200.0).failovers == 2


def test_a_failed_probe_during_the_hold_restarts_it():
    """A recovered upstream that fails one probe while held waits a full hold again."""
    m = HealthMachine(2)
    bad = {0: lambda t: 100 < t < 700 or 991.1 < t < 991.2}  # the held probe at 991.15 fails
    changes = drive(m, 0.0, 1300.0, lambda i, t: not bad.get(i, lambda t: False)(t))
    assert changes[0] == (120.8, 1)
    assert changes[1][1] == 0 and changes[1][0] >= 991.2 + 60.0


@pytest.mark.parametrize("seed", range(8))
def test_a_30_percent_lossy_primary_does_not_flap(seed):
    """30% of the primary's probes fail: over 6 h few switches, each failback at least a hold
    after the switch before it, and the hold grows with each failback that failed."""
    rng = random.Random(seed)
    m = HealthMachine(2)
    changes = drive(m, 0.0, 6 * 3600.0, lambda i, t: i == 1 or rng.random() >= 0.3)
    assert len(changes) <= 10
    for (t0, _), (t1, to) in zip(changes, changes[1:]):
        if to == 0:  # a failback
            assert t1 - t0 >= HealthConfig().failback_hold_s
    late = [c for c in changes if c[0] > 3 * 3600]
    assert len(late) <= 3  # damped: the lossy primary is mostly left alone


def test_flap_damping_doubles_the_hold_of_an_upstream_that_fails_after_failback():
    """Failback, then DOWN again: the next hold is 120 s; capped at failback_hold_max_s."""
    m = HealthMachine(2, HealthConfig(failback_hold_max_s=100.0))
    bad = lambda i, t: not (i == 0 and (100 < t < 700 or 1100 < t < 1500))  # noqa: E731
    changes = drive(m, 0.0, 1200.0, bad)
    assert changes == [(120.8, 1), (1021.25, 0), (1111.95, 1)]
    assert m.snapshot(1200.0).upstreams[0].hold_s == 100.0  # 2 * 60, capped at 100


def test_all_down_means_no_active_and_the_first_recovered_takes_over_at_once():
    """All DOWN: active None (fail closed), probed every 2 s (the machine is offline); the
    first one UP again is active at once (no hold: nothing to flap from)."""
    m = HealthMachine(2)
    changes = drive(m, 0.0, 130.0, lambda i, t: t < 100)
    s = m.snapshot(130.0)
    assert (s.active, s.all_down) == (None, True)
    assert repr(m) == "<Health [active: none, failovers: 1 | 0: down, 1: down]>"
    assert m.next_wakeup(130.0) == pytest.approx(0.85)  # the all-down pace: every 2 s
    changes += drive(m, 130.0, 400.0, lambda i, t: i == 1 and t > 200)
    assert changes == [(120.8, None), (204.7, 1)]  # 1 good at ~200.7, 202.7, 204.7: active at once


def test_forced_failover_prefers_an_up_standby_over_an_unknown_one():
    """The active goes DOWN: the first UP upstream in priority order, before unjudged ones."""
    m = HealthMachine(3)
    assert m.due(0.0) == (0, 1, 2)
    m.probe_result(2, True, 0.1)
    m.probe_result(0, False, 0.1)
    m.due(0.6)
    m.probe_result(0, False, 0.6)
    assert m.snapshot(0.6).active == 2  # 1 still unknown


def test_passive_storm_triggers_few_probes_and_never_changes_state():
    """1000 failing flows in 10 s while probes pass: about one probe a second, still UP."""
    m = both_up()
    probes = 0
    for k in range(1000):
        t = 1.0 + k * 0.01
        m.passive(0, PassiveSignal.CONNECT_RESET, t)
        for i in m.due(t):
            probes += 1
            m.probe_result(i, True, t + 0.02, 0.02)
    assert probes <= 11
    s = m.snapshot(11.0)
    assert s.active == 0 and s.upstreams[0].state is UP and s.failovers == 0


def test_passive_signal_on_a_down_upstream_asks_for_nothing():
    """A DOWN upstream carries no new flows: a late passive signal does not hurry its probe."""
    m = both_up()
    for t in (30.05, 30.6):
        assert m.due(t) == (0,)
        m.probe_result(0, False, t)
    assert m.due(30.6) == (1,)  # the new active, last probed 30 s ago: at once
    m.probe_result(1, True, 30.65)
    m.passive(0, PassiveSignal.CONNECT_REFUSED, 31.0)
    assert m.next_wakeup(31.0) == pytest.approx(29.65)  # 1 at 60.65; 0 not before 150.6


def test_exit_info_and_country_alert():
    """Exit IP/country are shown; a country other than the configured one is an alert."""
    m = HealthMachine(2, HealthConfig(expected_countries=("de", None)))
    m.exit_info(0, "203.0.113.7", "DE", 1.0)
    m.exit_info(1, "198.51.100.2", "us", 1.0)
    a, b = m.snapshot(1.0).upstreams
    assert (a.exit_ip, a.exit_country, a.alert) == ("203.0.113.7", "DE", None)
    assert (b.exit_country, b.alert) == ("US", None)  # nothing expected for 1
    m.exit_info(0, "192.0.2.9", "fr", 2.0)
    assert m.snapshot(2.0).upstreams[0].alert == "exit country FR, expected DE"
    m.exit_failed(0, "lookup\nfailed: \x00timeout", 3.0)
    v = m.snapshot(3.0).upstreams[0]
    assert (v.exit_error, v.exit_checked_at) == ("lookup failed: ?timeout", 3.0)
    assert (v.exit_ip, v.alert) == ("192.0.2.9", "exit country FR, expected DE")  # last seen


def test_snapshot_is_the_same_object_until_something_changes():
    """Due probes and passive signals leave the snapshot alone; results and exits replace it."""
    m = HealthMachine(2)
    s1 = m.snapshot(0.0)
    m.due(0.0)
    m.passive(0, PassiveSignal.PROXY_ERROR, 0.01)
    assert m.snapshot(0.02) is s1 and s1.version == 1
    m.probe_result(0, True, 0.05, 0.05)
    s2 = m.snapshot(0.05)
    assert s2 is not s1 and s2.version == 2 and m.snapshot(9.0) is s2
    assert s2.upstreams[0].latency_s == 0.05 and s2.upstreams[0].up_since == 0.05


def test_a_probe_never_reported_is_handed_out_again_after_lost_probe_s():
    """A prober that loses a probe does not stop health checks of that upstream forever."""
    m = HealthMachine(1, HealthConfig(lost_probe_s=60.0))
    assert m.due(0.0) == (0,)
    assert m.next_wakeup(1.0) == pytest.approx(59.0) and m.due(59.9) == ()
    assert m.due(60.0) == (0,)


def test_probe_reason_is_one_printable_capped_line_and_bad_latency_is_dropped():
    """Whatever the prober says is shown as one short printable line."""
    m = HealthMachine(1)
    m.probe_result(0, False, 1.0, reason="line1\r\nline2 \x1b[31m" + "x" * 1000)
    v = m.snapshot(1.0).upstreams[0]
    assert v.last_reason.startswith("line1 line2 ?[31mxxx") and len(v.last_reason) == 200
    m.probe_result(0, True, 2.0, latency_s=float("nan"))
    assert m.snapshot(2.0).upstreams[0].latency_s is None


def test_config_is_checked():
    """Nonsense settings are refused with one clear line."""
    with pytest.raises(ValueError, match="fail_threshold"):
        HealthConfig(fail_threshold=0)
    with pytest.raises(ValueError, match="intervals"):
        HealthConfig(active_interval_s=0)
    with pytest.raises(ValueError, match="failback_hold_max_s"):
        HealthConfig(failback_hold_s=100, failback_hold_max_s=50)
    with pytest.raises(ValueError, match="at least one"):
        HealthMachine(0)
    with pytest.raises(ValueError, match="countries"):
        HealthMachine(1, HealthConfig(expected_countries=("DE", "FR")))


@pytest.mark.parametrize("module", ["health/state.py", "health/signals.py"])
def test_health_cores_import_no_io_clock_or_loop(module):
    """The pure health cores import no asyncio, socket, os, subprocess, time, random."""
    tree = ast.parse((ROOT / module).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    forbidden = {"asyncio", "socket", "os", "subprocess", "time", "select", "threading", "random"}
    assert not {n.split(".")[0] for n in names} & forbidden


_STEP = st.tuples(
    st.floats(0.0, 150.0),  # seconds since the step before
    st.sampled_from(["ok", "fail", "passive", "due"]),
    st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.lists(_STEP, max_size=120))
def test_random_inputs_never_pick_a_down_upstream_nor_fail_back_faster_than_the_hold(n, steps):
    """Any input sequence: active is never DOWN, None exactly when all are DOWN, and every
    switch away from a still-usable upstream is a failback held failback_hold_s."""
    cfg = HealthConfig()
    m = HealthMachine(n, cfg)
    t, last, last_change, changes = 0.0, m.snapshot(0.0), -math.inf, 0
    for dt, kind, i in steps:
        t, i = t + dt, i % n
        if kind == "ok":
            m.probe_result(i, True, t, 0.1)
        elif kind == "fail":
            m.probe_result(i, False, t, reason="refused")
        elif kind == "passive":
            m.passive(i, PassiveSignal.CONNECT_REFUSED, t)
        else:
            wait = m.next_wakeup(t)
            assert 0.0 <= wait < math.inf and (wait == 0) == (m.due(t) != ())
        s = m.snapshot(t)
        states = [u.state for u in s.upstreams]
        assert s.all_down == (s.active is None) == all(x is DOWN for x in states)
        assert s.active is None or states[s.active] is not DOWN
        if s.active != last.active:
            changes += 1
            prev = last.active
            if prev is not None and states[prev] is not DOWN:  # not forced: a failback
                new = s.upstreams[s.active]
                assert s.active < prev and new.state is UP
                assert t - last_change >= cfg.failback_hold_s
                assert t - new.up_since >= cfg.failback_hold_s
            last_change = t
        assert s.failovers == changes
        last = s
