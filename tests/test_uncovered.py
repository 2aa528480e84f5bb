"""Which of the main table's routes leave networks blocked while up (pure)."""

from __future__ import annotations

from atlantic.system.uncovered import MainRoute, uncovered

ROUTES = [
    MainRoute("0.0.0.0/0", "wlan0", "192.168.1.1"),
    MainRoute("192.168.1.0/24", "wlan0"),
    MainRoute("10.0.0.0/8", "wg0", "10.8.0.1"),
    MainRoute("10.8.0.0/24", "wg0"),
    MainRoute("198.18.0.0/30", "atl0"),
    MainRoute("169.254.0.0/16", "wlan0"),
    MainRoute("::/0", "wlan0", "fe80::1"),
    MainRoute("fe80::/64", "wlan0"),
    MainRoute("2001:db8:5::/64", "wlan0"),
    MainRoute("203.0.113.0/24", kind="unreachable"),
    MainRoute("10.0.0.0/8", "wg0", "10.8.0.1"),  # listed twice (two metrics): once in the answer
]


def test_default_ours_and_never_networks_are_left_out():
    """Default routes, the TUN's, link-local, and routes that reach nothing are not listed."""
    got = [r.describe() for r in uncovered(ROUTES, tun="atl0")]
    assert got == ["192.168.1.0/24 dev wlan0", "10.0.0.0/8 via 10.8.0.1 dev wg0", "10.8.0.0/24 dev wg0",
                   "2001:db8:5::/64 dev wlan0"]


def test_lan_prefixes_are_reachable_and_not_listed():
    """A route inside a capture.lan prefix goes there directly: not blocked."""
    got = [r.dst for r in uncovered(ROUTES, lan=("10.0.0.0/8", "192.168.1.0/24"), tun="atl0")]
    assert got == ["2001:db8:5::/64"]


def test_no_default_route_at_all_lists_every_network():
    """A machine reaching only split networks: each of them is listed."""
    got = uncovered([MainRoute("10.1.0.0/16", "eth0"), MainRoute("172.16.0.0/12", "eth0", "10.1.0.1")])
    assert [r.dst for r in got] == ["10.1.0.0/16", "172.16.0.0/12"]


def test_garbage_destinations_are_skipped():
    """A destination netlink might report oddly never raises."""
    assert uncovered([MainRoute("not-a-prefix", "eth0"), MainRoute("", "eth0")]) == []
