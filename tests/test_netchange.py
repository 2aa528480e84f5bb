"""The network-change tracker, pure: debounce windows, what is ignored, MAJOR vs MINOR."""

from __future__ import annotations

import pytest

from atlantic.system.netchange import (MAX_REASONS, Address, Change, ChangeTracker, ClockJumpDetector,
                                       EventsLost, Kind, Link, Route)

TABLE = 2026
LO, ETH, WLAN, TUN = 1, 2, 3, 9


def link(index: int, name: str, up: bool = True, *, admin: bool | None = None, **kw) -> Link:
    return Link(index, name, up if admin is None else admin, up, "UP" if up else "DOWN", **kw)


BASE = [
    link(LO, "lo"), link(ETH, "eth0"), link(WLAN, "wlan0", False), link(TUN, "atl0"),
    Address(4, "127.0.0.1", LO, 8), Address(4, "192.0.2.2", ETH, 24, "eth0"),
    Address(6, "fd00::2", ETH, 64), Address(4, "10.7.0.1", TUN, 30, "atl0"),
    Route(4, gateway="192.0.2.1", oif=ETH), Route(6, gateway="fd00::1", oif=ETH, metric=1024),
    Route(4, oif=TUN, table=TABLE),
]


def tracker(**kw) -> ChangeTracker:
    t = ChangeTracker(tun="atl0", table=TABLE, **kw)
    t.resync(BASE)
    return t


def one(t: ChangeTracker, *events, now: float = 0.0) -> Change:
    for ev in events:
        t.event(ev, now)
    change = t.due(now + 60)
    assert change is not None
    return change


def test_seeding_reports_nothing():
    """The dump that seeds the tracker is the starting point, not a change."""
    t = tracker()
    assert not t.is_pending() and t.deadline() is None and t.due(100.0) is None
    assert repr(t) == "<ChangeTracker links=4 addresses=2 routes=2 pending=0>"  # ours are not kept


def test_change_is_due_one_quiet_second_after_the_last_event():
    """Nothing before ``quiet`` s of silence; the change once, then nothing."""
    t = tracker()
    t.event(Address(4, "192.0.2.9", ETH, 24), 10.0)
    assert t.due(10.99) is None
    change = t.due(11.0)
    assert change == Change(Kind.MAJOR, ("new address 192.0.2.9/24 on eth0",))
    assert t.due(20.0) is None and not t.is_pending()


def test_each_event_extends_the_window():
    """Events 0.8 s apart keep the window open until 1 s after the last."""
    t = tracker()
    for i, now in enumerate((0.0, 0.8, 1.6)):
        t.event(Address(4, f"192.0.2.{10 + i}", ETH, 24), now)
    assert t.deadline() == pytest.approx(2.6)
    assert t.due(2.5) is None and t.due(2.6) is not None


def test_a_storm_is_cut_at_max_delay_after_the_first_event():
    """Events every 0.5 s for ever: a change still comes 5 s after the first."""
    t = tracker()
    for i in range(10):
        t.event(Address(4, f"192.0.2.{10 + i}", ETH, 24), i * 0.5)
    assert t.due(4.99) is None
    change = t.due(5.0)
    assert change is not None and change.more == 10 - MAX_REASONS
    t.event(Address(4, "192.0.2.99", ETH, 24), 5.2)  # the next window starts afresh
    assert t.deadline() == pytest.approx(6.2)


def test_a_dhcp_storm_becomes_one_change_with_each_reason_once():
    """Lease changed: old address gone, new one, routes back; one MAJOR change."""
    t = tracker()
    storm = [Address(4, "192.0.2.2", ETH, 24, "eth0", removed=True),
             Address(4, "192.0.2.7", ETH, 24, "eth0"),
             Route(4, "192.0.2.0/24", oif=ETH, kernel=True),
             Route(4, gateway="192.0.2.1", oif=ETH),
             Address(4, "192.0.2.7", ETH, 24, "eth0")]  # the client sets it twice
    for i, ev in enumerate(storm):
        t.event(ev, i * 0.1)
    assert t.due(1.29) is None  # the repeat at 0.4 s changed nothing: it does not extend the window
    change = t.due(1.3)
    assert change.kind is Kind.MAJOR
    assert change.reasons == ("lost address 192.0.2.2/24 on eth0", "new address 192.0.2.7/24 on eth0",
                              "new default route via 192.0.2.1 dev eth0")
    assert change.line() == ("major network change: lost address 192.0.2.2/24 on eth0; new address "
                             "192.0.2.7/24 on eth0; new default route via 192.0.2.1 dev eth0")


def test_repeats_of_what_is_known_are_no_change():
    """A renewal that keeps the address, an RA refreshing the route, a NEWLINK with no
    new state, the removal of something never seen: nothing pending."""
    t = tracker()
    for ev in (Address(4, "192.0.2.2", ETH, 24, "eth0"), Route(6, gateway="fd00::1", oif=ETH, metric=1024),
               link(ETH, "eth0"), Address(4, "198.51.100.1", ETH, 24, removed=True),
               Route(4, gateway="203.0.113.1", oif=ETH, removed=True), link(WLAN, "wlan0", False)):
        t.event(ev, 0.0)
    assert not t.is_pending()


def test_atlantic_s_own_tun_table_loopback_and_other_tables_are_ignored():
    """The daemon's TUN (also as a new device), its table, lo and non-main tables: no change."""
    t = tracker()
    for ev in (link(TUN, "atl0", False), link(TUN, "atl0"), link(12, "atl0"),
               Address(4, "10.7.0.5", TUN, 30), Address(6, "fd07::1", 12, 64),
               Address(4, "10.7.0.9", 77, 30, "atl0"),
               Route(4, "10.7.0.0/30", oif=TUN), Route(4, oif=TUN), Route(6, oif=12, metric=1),
               Route(4, gateway="192.0.2.1", oif=ETH, table=TABLE),
               Route(4, "192.0.2.2/32", oif=ETH, table=255),
               Route(4, gateway="192.0.2.1", oif=ETH, table=100),
               link(LO, "lo", False), link(LO, "lo"), Address(4, "127.0.0.2", LO, 8),
               Route(4, "10.7.0.0/30", oif=TUN, removed=True), link(TUN, "atl0", removed=True)):
        t.event(ev, 0.0)
    assert not t.is_pending()


@pytest.mark.parametrize("events, kind, reasons", [
    ([Address(6, "2001:db8::5", ETH, 64)], Kind.MAJOR, ["new address 2001:db8::5/64 on eth0"]),
    ([Address(6, "fd00::2", ETH, 64, removed=True)], Kind.MAJOR, ["lost address fd00::2/64 on eth0"]),
    ([Route(4, gateway="192.0.2.1", oif=ETH, removed=True)], Kind.MAJOR,
     ["lost default route via 192.0.2.1 dev eth0"]),
    ([Route(4, gateway="192.0.2.254", oif=ETH, replace=True), Route(4, gateway="192.0.2.1", oif=ETH)],
     Kind.MAJOR, ["new default route via 192.0.2.254 dev eth0", "new default route via 192.0.2.1 dev eth0"]),
    ([link(WLAN, "wlan0"), Route(4, gateway="10.1.0.1", oif=WLAN, metric=600)], Kind.MAJOR,
     ["link wlan0 up", "new default route via 10.1.0.1 dev wlan0"]),
    ([link(ETH, "eth0", False, admin=True), link(ETH, "eth0")], Kind.MAJOR,
     ["uplink eth0 down (DOWN)", "uplink eth0 up again"]),
    ([link(ETH, "eth0", removed=True)], Kind.MAJOR, ["uplink eth0 removed"]),
    ([EventsLost("No buffer space available")], Kind.MAJOR,
     ["netlink events lost: No buffer space available"]),
    ([link(WLAN, "wlan0"), link(WLAN, "wlan0", False)], Kind.MINOR,
     ["link wlan0 up", "link wlan0 down (DOWN)"]),
    ([link(20, "veth1")], Kind.MINOR, ["link veth1 up"]),
    ([link(WLAN, "wlan0", removed=True)], Kind.MINOR, ["link wlan0 removed"]),
    ([Address(6, "fe80::1", ETH, 64), Address(6, "fe80::1", ETH, 64, removed=True)], Kind.MINOR,
     ["new address fe80::1/64 on eth0", "lost address fe80::1/64 on eth0"]),
    ([Address(6, "fd00::77", ETH, 64, temporary=True)], Kind.MINOR, ["new address fd00::77/64 on eth0"]),
    ([Route(4, "10.50.0.0/16", "192.0.2.9", ETH), Route(4, "10.50.0.0/16", "192.0.2.9", ETH, removed=True)],
     Kind.MINOR, ["new route 10.50.0.0/16 via 192.0.2.9 dev eth0",
                  "lost route 10.50.0.0/16 via 192.0.2.9 dev eth0"]),
    ([Address(4, "10.9.9.9", 42, 24, "eth9:1")], Kind.MAJOR, ["new address 10.9.9.9/24 on eth9"]),
])
def test_each_reason_is_listed_with_its_kind(events, kind, reasons):
    """What happened, in order, one reason each; MAJOR when any reason is."""
    change = one(tracker(), *events)
    assert (change.kind, list(change.reasons)) == (kind, reasons)


def test_a_link_bounce_is_major_only_for_an_uplink():
    """wlan0 (no default route) down and up is MINOR; eth0 (the uplink) on carrier loss is MAJOR."""
    t = tracker()
    assert one(t, link(WLAN, "wlan0"), link(WLAN, "wlan0", False), link(WLAN, "wlan0")).kind is Kind.MINOR
    change = one(t, Link(ETH, "eth0", True, False, "LOWERLAYERDOWN"), link(ETH, "eth0"))
    assert change.reasons == ("uplink eth0 down (LOWERLAYERDOWN)", "uplink eth0 up again")


def test_admin_down_forgets_the_ipv4_routes_the_kernel_flushed_silently():
    """After `ip link set eth0 down` the IPv4 default is gone without a DELROUTE; when
    eth0 comes back and the DHCP client re-adds it, that is a new default route, and
    eth0 still counts as the uplink that bounced."""
    t = tracker()
    one(t, link(ETH, "eth0", False))
    assert "routes=1" in repr(t)  # only the IPv6 default is left: it goes with its own DELROUTE
    change = one(t, Route(6, gateway="fd00::1", oif=ETH, metric=1024, removed=True),
                 link(ETH, "eth0"), Route(4, gateway="192.0.2.1", oif=ETH))
    assert change.reasons == ("lost default route via fd00::1 dev eth0", "uplink eth0 up again",
                              "new default route via 192.0.2.1 dev eth0")


def test_losing_the_last_ipv4_address_forgets_its_ipv4_routes():
    """The kernel drops the IPv4 routes of a device with no IPv4 address left, silently."""
    t = tracker()
    one(t, Address(4, "192.0.2.2", ETH, 24, removed=True))
    assert one(t, Address(4, "192.0.2.2", ETH, 24), Route(4, gateway="192.0.2.1", oif=ETH)).reasons == (
        "new address 192.0.2.2/24 on eth0", "new default route via 192.0.2.1 dev eth0")


def test_a_replace_with_the_same_route_is_no_change():
    """NLM_F_REPLACE carrying the route already known (a network manager re-applying it)."""
    t = tracker()
    t.event(Route(4, gateway="192.0.2.1", oif=ETH, replace=True), 0.0)
    assert not t.is_pending()


def test_a_clock_jump_is_a_major_change():
    """Boot time ran 42 s ahead of the monotonic clock: a suspend, reported MAJOR."""
    t = tracker()
    t.tick(100.0, 1000.0)
    t.tick(102.0, 1002.1)  # drift and oversleep stay below the threshold
    assert not t.is_pending()
    t.tick(104.0, 1046.1)
    assert t.due(104.5) is None
    assert t.due(105.0) == Change(Kind.MAJOR, ("clock jumped +42 s (suspend/resume)",))


def test_clock_jump_detector_both_ways_and_threshold():
    """The first reading is a baseline; jumps either way beyond the threshold count."""
    d = ClockJumpDetector(threshold=5.0)
    assert d.reading(0.0, 50.0) is None
    assert d.reading(2.0, 52.0) is None
    assert d.reading(4.0, 58.9) is None  # 4.9 s: below
    assert d.reading(6.0, 50.9) == pytest.approx(-10.0)
    assert d.reading(8.0, 52.9) is None


def test_a_suspend_merges_with_the_network_events_around_it():
    """The clock jump and the Wi-Fi coming back are one change, not two."""
    t = tracker()
    t.tick(10.0, 10.0)
    t.tick(12.0, 612.0)
    t.event(Route(4, gateway="192.0.2.1", oif=ETH, removed=True), 12.5)
    t.event(Route(4, gateway="192.0.2.1", oif=ETH), 13.0)
    assert t.due(13.9) is None
    assert one(t).reasons == ("clock jumped +600 s (suspend/resume)",
                              "lost default route via 192.0.2.1 dev eth0",
                              "new default route via 192.0.2.1 dev eth0")
