"""`atlantic status` without --json: the rows shown for each state."""

from __future__ import annotations

from atlantic.client.report import status_rows


def test_down_shows_state_and_problem():
    """A crashed daemon shows the problem line that tells the user what to run."""
    rows = dict(status_rows({"state": "down", "problem": "the daemon died; run `sudo atlantic down`"}))
    assert rows == {"state": "down", "problem": "the daemon died; run `sudo atlantic down`"}


def test_up_shows_counters_readably():
    """An up report shows upstream, flows, sizes in binary units and the last error."""
    rows = dict(status_rows({
        "state": "up", "pid": 42, "upstream": "http://u:***@10.0.0.1:3128", "tun": "atl0", "mtu": 65520,
        "offload": True, "uptime_s": 3725, "flows_open": 2, "flows_total": 10, "flows_failed": 1,
        "bytes_up": 2048, "bytes_down": 3 * 1024 * 1024,
        "last_error": {"message": "proxy refused authentication (407)", "count": 3, "age_s": 5},
        "ipv6": "captured", "kill_switch": True, "udp_policy": "drop",
        "pool": {"requests": 30, "reused": 29, "connections_opened": 1, "h2_streams": 0, "tunnels_warm": 4,
                 "tunnels_cold": 1, "ttfb_ms_p50": 88.04},
        "dns": {"queries": 5, "answered_fake": 4, "forwarded": 1},
    }))
    assert rows["upstream"] == "http://u:***@10.0.0.1:3128"
    assert rows["uptime"] == "1h 02m 05s"
    assert rows["flows"] == "2 open, 10 total, 1 failed"
    assert rows["traffic"] == "2.0 KiB up, 3.0 MiB down"
    assert rows["last error"] == "proxy refused authentication (407) (3x, 5 s ago)"
    assert rows["capture"] == "IPv6 captured, kill switch on, other UDP: drop"
    assert rows["pool"] == ("30 requests, 29 on reused connections, 1 connections opened, 0 h2 streams, "
                            "tunnels 4 warm / 1 cold, TTFB p50 88.0 ms")
    assert rows["dns"] == "5 queries, 4 fake answers, 1 forwarded through the upstream"


def test_up_shows_upstreams_leaks_network_and_blocked_routes():
    """Each upstream in priority order with state, probe and exit; leaks; the network's last
    change and the routes left blocked."""
    rows = dict(status_rows({
        "state": "up",
        "health": {"active": "http://gw2:3128", "all_down": False, "failovers": 1, "upstreams": [
            {"url": "http://u:***@gw1:3128", "state": "down", "active": False, "latency_ms": None,
             "last_result": "proxy gw1:3128: cannot connect (Connection refused)", "exit_ip": None},
            {"url": "http://u:***@gw2:3128", "state": "up", "active": True, "latency_ms": 41.2,
             "exit_ip": "203.0.113.9", "exit_country": "DE", "alert": "exit country DE, expected US"}]},
        "leaks": {"sealed": True, "blocked_packets": 7, "last": {"bound_socket": {"result": "ok"}}},
        "network": {"changes": 2, "last_change": "major network change: new address 10.0.0.5/24 on wlan0",
                    "blocked_routes": ["10.0.0.0/8 via 10.8.0.1 dev wg0", "192.168.1.0/24 dev wlan0"]},
    }))
    assert rows["upstream 1"] == "http://u:***@gw1:3128: down, proxy gw1:3128: cannot connect (Connection refused)"
    assert rows["upstream 2"] == ("http://u:***@gw2:3128: up (active), probe 41 ms, exit 203.0.113.9 (DE), "
                                  "ALERT: exit country DE, expected US")
    assert rows["leaks"] == "sealed; 7 packets blocked since up; last checks: bound_socket ok"
    assert rows["network"] == "2 changes; last: major network change: new address 10.0.0.5/24 on wlan0"
    assert rows["blocked"].startswith("10.0.0.0/8 via 10.8.0.1 dev wg0, 192.168.1.0/24 dev wlan0 (routes")


def test_all_down_says_flows_are_refused():
    """Every upstream down: one row says so before the upstreams."""
    rows = status_rows({"state": "up", "health": {"all_down": True, "upstreams": []}})
    assert ("health", "every upstream is down: flows are refused") in rows
