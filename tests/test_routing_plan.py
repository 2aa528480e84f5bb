"""The routing plan is pure data: what capture changes, and its JSON round trip."""

from __future__ import annotations

import json
import socket

from atlantic.interceptor.routing import (
    FAIL_CLOSED_METRIC,
    MAIN_TABLE,
    Route,
    Rule,
    RoutingPlan,
    plan_routing,
)


def test_plan_is_wg_quick_shaped():
    """Main with suppress_prefixlength 0 comes first, then unmarked packets look up our table."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000)
    assert plan.rules == (
        Rule(socket.AF_INET, 31999, MAIN_TABLE, suppress_prefixlength=0),
        Rule(socket.AF_INET, 32000, 2026, fwmark=0x2026, invert=True),
    )


def test_plan_fails_closed_without_the_tun():
    """Behind the TUN route sits an unreachable default, so a dead TUN does not fall through to main."""
    plan = plan_routing("atl0", 2026, 0x2026, 32000)
    assert plan.routes == (
        Route(socket.AF_INET, 2026, "atl0"),
        Route(socket.AF_INET, 2026, None, metric=FAIL_CLOSED_METRIC),
    )
    assert plan.routes[1].metric > plan.routes[0].metric


def test_plan_round_trips_through_json():
    """The state file's record reads back equal to the plan that wrote it."""
    plan = plan_routing("atl7", 3000, 0x1, 100)
    again = RoutingPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
