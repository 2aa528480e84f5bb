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
