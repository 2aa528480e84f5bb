"""Prometheus metrics: names and values from a status report, a real scrape on loopback,
and the refresh bound (a scrape storm builds the report at most once a second)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from atlantic.client.metrics import MetricsError, StatusCollector, families, parse_listen, serve

REPORT = {
    "state": "up", "version": "0.1.0", "uptime_s": 12.5, "flows_total": 40, "flows_failed": 2,
    "flows_open": 3, "bytes_up": 100, "bytes_down": 5000, "flow_kinds": {"http": 30, "tls": 9, "other": 1},
    "http": {"requests": 31}, "pool": {"connections_open": 2, "connections_opened": 4, "requests": 31,
                                      "reused": 27},
    "dns": {"queries": 17},
    "health": {"active": 1, "failovers": 1, "upstreams": [
        {"url": "http://a@p1:3128", "state": "down", "active": False, "latency_ms": None},
        {"url": "http://a@p2:3128", "state": "up", "active": True, "latency_ms": 41.0,
         "exit_ip": "10.77.4.2", "exit_country": "de"}]},
    "leaks": {"blocked_packets": 5, "checks": {"bound_socket": {"ok": 3}, "exit_address": {"ok": 2, "leak": 0}}},
}


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _text(report: dict) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(lambda: report))
    return generate_latest(reg).decode()


def test_report_becomes_prometheus_names_with_the_atlantic_prefix():
    """Counters end in _total, gauges carry units, every name starts with atlantic_."""
    s = _samples(_text(REPORT))
    assert all(name.startswith("atlantic_") for name, _ in s)
    assert s[("atlantic_flows_total", ())] == 40
    assert s[("atlantic_bytes_total", (("direction", "down"),))] == 5000
    assert s[("atlantic_pool_connections", ())] == 2
    assert s[("atlantic_upstream_up", (("upstream", "http://p1:3128"),))] == 0  # no user name in labels
    assert s[("atlantic_upstream_up", (("upstream", "http://p2:3128"),))] == 1
    assert s[("atlantic_failovers_total", ())] == 1
    assert s[("atlantic_killswitch_blocked_packets_total", ())] == 5
    assert s[("atlantic_leak_checks_total", (("check", "exit_address"), ("result", "ok")))] == 2
    assert s[("atlantic_exit_info", (("country", "de"), ("ip", "10.77.4.2"), ("upstream", "http://p2:3128")))] == 1
    assert s[("atlantic_build_info", (("version", "0.1.0"),))] == 1


def test_a_report_without_health_or_leaks_still_renders():
    """A single-upstream daemon (no health section yet) gives the flow metrics only."""
    names = {f.name for f in families({"state": "starting", "version": "x"})}
    assert "atlantic_up" in names and "atlantic_upstream_up" not in names


def test_scrapes_build_the_report_at_most_once_per_refresh():
    """Many scrapes within a second cost one report; after the interval, a new one."""
    calls = []
    now = [0.0]
    c = StatusCollector(lambda: calls.append(1) or REPORT, clock=lambda: now[0])
    for _ in range(50):
        list(c.collect())
    assert len(calls) == 1
    now[0] = 1.0
    list(c.collect())
    assert len(calls) == 2


@pytest.mark.parametrize("bad", ["localhost:9477", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":9"])
def test_bad_listen_addresses_are_one_line_errors(bad):
    """Only IP:PORT is accepted, with a message that shows the expected form."""
    with pytest.raises(MetricsError, match="metrics address") as info:
        parse_listen(bad)
    assert "\n" not in str(info.value)


def test_metrics_served_over_http_on_loopback():
    """/metrics answers a real HTTP GET on 127.0.0.1 and stops on close()."""
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = serve(f"127.0.0.1:{port}", lambda: REPORT)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert _samples(body)[("atlantic_flows_total", ())] == 40


def test_tls_termination_metrics_appear_only_when_domains_are_listed():
    """With a `tls` block: terminated, failures, pass-through names and origin connections;
    without one (nothing listed), no atlantic_tls_* family at all."""
    report = {**REPORT, "tls": {"terminated": 7, "handshake_failures": 1, "pass_through": [{"name": "a.example"}]},
              "pool": {**REPORT.get("pool", {}), "origin_tls_opened": 1, "origin_tls_reused": 6}}
    s = _samples(_text(report))
    assert s[("atlantic_tls_terminated_total", ())] == 7
    assert s[("atlantic_tls_handshake_failures_total", ())] == 1
    assert s[("atlantic_tls_pass_through_names", ())] == 1
    assert s[("atlantic_origin_tls_opened_total", ())] == 1 and s[("atlantic_origin_tls_reused_total", ())] == 6
    assert not any(name.startswith("atlantic_tls_") for name, _ in _samples(_text(REPORT)))
