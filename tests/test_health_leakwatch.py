"""The leak detector's bookkeeping: counters since up (across a re-made table), one alert
line per change of a check, the snapshot for status, and the exit-address rule."""

from __future__ import annotations

from atlantic.health.leakwatch import Check, CheckResult, LeakWatch, exit_address_result


def test_blocked_counts_carry_over_when_the_table_is_made_anew():
    """Counters that restart at zero (table restored) add to what was counted before."""
    w = LeakWatch()
    w.counters(5, 1)
    w.counters(9, 2)
    w.counters(3, 0)  # someone flushed the ruleset; the daemon put a new table in place
    snap = w.snapshot()
    assert (snap.blocked_packets, snap.blocked_dns_packets) == (12, 2)


def test_one_alert_when_a_check_turns_bad_and_one_when_it_recovers():
    """Ten leaking runs in a row give one alert line; passing again gives one more."""
    w = LeakWatch()
    w.result(Check.BOUND_SOCKET, CheckResult.OK, "refused", 1.0)
    assert w.alerts() == []
    for i in range(10):
        w.result(Check.BOUND_SOCKET, CheckResult.LEAK, "got through", 2.0 + i)
    alerts = w.alerts()
    assert len(alerts) == 1 and alerts[0].startswith("LEAK: bound_socket")
    assert w.snapshot().sealed is False
    w.result(Check.BOUND_SOCKET, CheckResult.OK, "refused", 20.0)
    assert len(w.alerts()) == 1 and w.snapshot().sealed is True


def test_snapshot_is_reused_until_something_changes_and_reads_as_json():
    """Status can hold the snapshot; it lists the last run and the counts per result."""
    w = LeakWatch()
    w.result(Check.EXIT_ADDRESS, CheckResult.OK, "fine", 3.0)
    first = w.snapshot()
    assert w.snapshot() is first
    d = first.as_dict()
    assert d["last"]["exit_address"]["result"] == "ok" and d["checks"] == {"exit_address": {"ok": 1}}
    w.counters(1, 0)
    assert w.snapshot() is not first


def test_exit_address_must_not_be_our_own():
    """The exit seen through the tunnel equal to a local address is a leak; unknown is skipped."""
    own = frozenset({"10.77.1.2", "fd00::2"})
    assert exit_address_result(None, own)[0] is CheckResult.SKIPPED
    assert exit_address_result("10.77.1.2", own)[0] is CheckResult.LEAK
    assert exit_address_result("10.77.2.2", own)[0] is CheckResult.OK
