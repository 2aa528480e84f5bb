"""The routing plan is pure data: what capture changes, and its JSON round trip."""

from __future__ import annotations

import json
import socket

import pytest

from atlantic.system.routing import (
    FAIL_CLOSED_METRIC,
    MAIN_TABLE,
    Route,
    Rule,
    RoutingPlan,
    plan_routing,
)

V4, V6 = socket.AF_INET, socket.AF_INET6


def test_plan_is_wg_quick_shaped():
    """Main with suppress_prefixlength 0 comes first, then unmarked packets look up our table, per family."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000)
    assert plan.rules == (
        Rule(V4, 31999, MAIN_TABLE, suppress_prefixlength=0),
        Rule(V4, 32000, 2026, fwmark=0x2026, invert=True),
        Rule(V6, 31999, MAIN_TABLE, suppress_prefixlength=0),
        Rule(V6, 32000, 2026, fwmark=0x2026, invert=True),
    )


def test_plan_fails_closed_without_the_tun():
    """Behind the TUN route sits an unreachable default, so a dead TUN does not fall through to main."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000)
    v4 = [r for r in plan.routes if r.family == V4]
    assert v4 == [Route(V4, 2026, "atl0"), Route(V4, 2026, None, metric=FAIL_CLOSED_METRIC)]
    assert v4[1].metric > v4[0].metric


def test_ipv6_is_blocked_by_default():
    """Without IPv6 capture, unmarked IPv6 meets only an unreachable default: it fails at once, never leaks."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000)
    assert [r for r in plan.routes if r.family == V6] == [Route(V6, 2026, None, metric=FAIL_CLOSED_METRIC)]


def test_ipv6_captured_routes_through_the_tun():
    """With IPv6 capture, table 2026 has an IPv6 default through the TUN in front of the unreachable one."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000, ipv6="captured")
    assert [r for r in plan.routes if r.family == V6] == [
        Route(V6, 2026, "atl0"),
        Route(V6, 2026, None, metric=FAIL_CLOSED_METRIC),
    ]


def test_dns_and_lan_rules_come_in_front_in_order():
    """Marked->main, DNS udp/tcp 53 -> our table, LAN -> main, then wg-quick's rules; LAN split by family."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000, capture_dns=True, lan=["192.168.7.0/24", "fd12::/64"])
    v4 = [r for r in plan.rules if r.family == V4]
    assert v4 == [
        Rule(V4, 31995, MAIN_TABLE, fwmark=0x2026),
        Rule(V4, 31996, 2026, ip_proto=17, dport=53),
        Rule(V4, 31997, 2026, ip_proto=6, dport=53),
        Rule(V4, 31998, MAIN_TABLE, dst="192.168.7.0/24"),
        Rule(V4, 31999, MAIN_TABLE, suppress_prefixlength=0),
        Rule(V4, 32000, 2026, fwmark=0x2026, invert=True),
    ]
    v6_lan = [r.dst for r in plan.rules if r.family == V6 and r.dst]
    assert v6_lan == ["fd12::/64"]


def test_bad_ipv6_mode_and_priority_are_refused():
    """An unknown IPv6 mode or a priority too low for the rules in front of ours is a ValueError."""
    with pytest.raises(ValueError, match="ipv6"):
        plan_routing("atl0", 2026, 0x2026, 32000, ipv6="leak")
    with pytest.raises(ValueError, match="priority"):
        plan_routing("atl0", 2026, 0x2026, 3)


def test_plan_round_trips_through_json():
    """The state file's record reads back equal to the plan that wrote it."""
    plan = plan_routing("atl7", 3000, 0x1, 100, ipv6="captured", capture_dns=True, lan=["10.1.0.0/16"])
    again = RoutingPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan


def test_old_records_still_read():
    """A state file written before the DNS/LAN fields existed reads back (fields default to None)."""
    old = {"rules": [{"family": 2, "priority": 1, "table": 254, "fwmark": None, "invert": False,
                      "suppress_prefixlength": 0}], "routes": [], "sysctls": []}
    assert RoutingPlan.from_json(old).rules == (Rule(V4, 1, MAIN_TABLE, suppress_prefixlength=0),)
