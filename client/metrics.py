"""Prometheus metrics: ``/metrics`` from the status report, off by default.

``atlantic up --metrics 127.0.0.1:9477`` (or ``[daemon] metrics = "..."``) serves the
same counters as ``atlantic status`` in the Prometheus text format, with the
``atlantic_`` prefix. Nothing is counted for it: the collector reads the status report
(built off the event loop, like ``status``) at most once a second, whatever the scrape
rate, so the hot path gains nothing. Names follow the Prometheus conventions (counters
end in ``_total``, units in the name).

``families(report)`` is the pure mapping (tested against a report); ``serve`` is the
thin HTTP adapter (prometheus-client's own server thread).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["MetricsError", "StatusCollector", "families", "parse_listen", "serve"]

REFRESH_S = 1.0  # a scrape never makes the daemon build its report more often than this


class MetricsError(ValueError):
    """A bad ``--metrics`` address or a port that cannot be bound (one line)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) -> (host, port). Loopback is what a user should
    want; any address is accepted, but it must be an address, not a name."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise MetricsError(f"metrics address {text!r}: expected HOST:PORT with an IP address, "
                           "e.g. 127.0.0.1:9477") from None
    if not sep or not 1 <= number <= 65535:
        raise MetricsError(f"metrics address {text!r}: the port must be within 1..65535")
    return host, number


def _counter(name: str, doc: str, value: float | int | None) -> CounterMetricFamily | None:
    if value is None:
        return None
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | int | None) -> GaugeMetricFamily | None:
    if value is None:
        return None
    return GaugeMetricFamily(name, doc, value=value)


def families(report: dict) -> list:
    """The metric families for one status report (pure; missing parts are left out)."""
    out = [
        InfoMetricFamily("atlantic_build", "Atlantic's version", value={"version": str(report.get("version", ""))}),
        _gauge("atlantic_up", "1 while the daemon carries traffic", 1 if report.get("state") == "up" else 0),
        _gauge("atlantic_uptime_seconds", "Seconds since the daemon started", report.get("uptime_s")),
        _counter("atlantic_flows", "Captured flows accepted", report.get("flows_total")),
        _counter("atlantic_flows_failed", "Flows refused or failed, with a reason", report.get("flows_failed")),
        _gauge("atlantic_flows_open", "Flows open now", report.get("flows_open")),
    ]
    if "bytes_up" in report:
        moved = CounterMetricFamily("atlantic_bytes", "Bytes carried", labels=["direction"])
        moved.add_metric(["up"], report.get("bytes_up", 0))
        moved.add_metric(["down"], report.get("bytes_down", 0))
        out.append(moved)
    kinds = report.get("flow_kinds")
    if isinstance(kinds, dict):
        by_kind = CounterMetricFamily("atlantic_flows_by_kind", "Flows by what they carried",
                                      labels=["kind"])
        for kind, count in sorted(kinds.items()):
            by_kind.add_metric([kind], count)
        out.append(by_kind)
    http = report.get("http") or {}
    out.append(_counter("atlantic_http_requests", "HTTP requests relayed over the pool", http.get("requests")))
    pool = report.get("pool") or {}
    out += [
        _gauge("atlantic_pool_connections", "Upstream connections open", pool.get("connections_open")),
        _counter("atlantic_pool_connections_opened", "Upstream connections opened", pool.get("connections_opened")),
        _counter("atlantic_pool_requests", "Requests sent on pooled connections", pool.get("requests")),
        _counter("atlantic_pool_reused", "Requests that reused a warm connection", pool.get("reused")),
    ]
    dns = report.get("dns") or {}
    out.append(_counter("atlantic_dns_queries", "DNS queries answered or forwarded", dns.get("queries")))
    out += _tls_families(report.get("tls"), pool)
    out += _health_families(report.get("health"))
    out += _leak_families(report.get("leaks"))
    return [f for f in out if f is not None]


def _tls_families(tls: dict | None, pool: dict) -> list:
    """TLS termination (only when some domains are listed): terminated connections, failures,
    names passing through, and the pool's verified origin connections."""
    if not tls:
        return []
    return [
        _counter("atlantic_tls_terminated", "Application TLS connections terminated with the local CA",
                 tls.get("terminated")),
        _counter("atlantic_tls_handshake_failures", "Application TLS handshakes that failed",
                 tls.get("handshake_failures")),
        _gauge("atlantic_tls_pass_through_names", "Names passing through untouched (the application refused the CA)",
               len(tls.get("pass_through") or ())),
        _counter("atlantic_origin_tls_opened", "Verified TLS connections opened to origins", pool.get("origin_tls_opened")),
        _counter("atlantic_origin_tls_reused", "Requests on an already open origin TLS connection",
                 pool.get("origin_tls_reused")),
    ]


_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def upstream_label(url: str) -> str:
    """An upstream as a label: scheme, host and port. The user name goes (providers put the
    customer and session in it, and any local user may scrape /metrics); so does a
    password, should one ever get this far."""
    return _USERINFO.sub("", url)


def _health_families(health: dict | None) -> list:
    if not isinstance(health, dict):
        return []
    up = GaugeMetricFamily("atlantic_upstream_up", "1 while an upstream is healthy", labels=["upstream"])
    active = GaugeMetricFamily("atlantic_upstream_active", "1 for the upstream carrying new flows",
                               labels=["upstream"])
    latency = GaugeMetricFamily("atlantic_upstream_probe_latency_seconds", "Latency of the last good probe",
                                labels=["upstream"])
    exit_info = InfoMetricFamily("atlantic_exit", "The exit address seen through an upstream",
                                 labels=["upstream"])
    for view in health.get("upstreams") or []:
        name = upstream_label(str(view.get("url", "")))
        up.add_metric([name], 1 if view.get("state") == "up" else 0)
        active.add_metric([name], 1 if view.get("active") else 0)
        if view.get("latency_ms") is not None:
            latency.add_metric([name], view["latency_ms"] / 1000.0)
        if view.get("exit_ip"):
            exit_info.add_metric([name], {"ip": str(view["exit_ip"]), "country": str(view.get("exit_country") or "")})
    return [up, active, latency, exit_info,
            _counter("atlantic_failovers", "Times new flows moved to another upstream", health.get("failovers"))]


def _leak_families(leaks: dict | None) -> list:
    if not isinstance(leaks, dict):
        return []
    checks = CounterMetricFamily("atlantic_leak_checks", "Leak checks run, by check and result",
                                 labels=["check", "result"])
    for check, results in sorted((leaks.get("checks") or {}).items()):
        for result, count in sorted(results.items()):
            checks.add_metric([check, result], count)
    return [_counter("atlantic_killswitch_blocked_packets", "Packets the kill switch stopped",
                     leaks.get("blocked_packets")), checks]


class StatusCollector(Collector):
    """A prometheus-client collector over a report function, refreshed at most once a second."""

    def __init__(self, report: Callable[[], dict], *, clock: Callable[[], float] = time.monotonic,
                 refresh_s: float = REFRESH_S) -> None:
        self.report, self.clock, self.refresh_s = report, clock, refresh_s
        self._lock = threading.Lock()  # scrapes may come on several server threads
        self._cached: dict = {}
        self._at = float("-inf")

    def latest(self) -> dict:
        """The last report, rebuilt if it is older than ``refresh_s``."""
        with self._lock:
            now = self.clock()
            if now - self._at >= self.refresh_s:
                self._cached, self._at = self.report(), now
            return self._cached

    def collect(self) -> Iterator:
        yield from families(self.latest())


class MetricsServer:
    """The running ``/metrics`` endpoint; ``close()`` stops it."""

    def __init__(self, server, thread: threading.Thread, address: tuple[str, int]) -> None:
        self._server, self._thread, self.address = server, thread, address

    def close(self) -> None:
        """Stop serving and wait briefly for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)


def serve(listen: str, report: Callable[[], dict]) -> MetricsServer:
    """Serve ``/metrics`` on ``listen`` (HOST:PORT) from ``report`` in a server thread."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(report))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"metrics address {listen}: cannot listen ({exc.strerror or exc})") from None
    return MetricsServer(server, thread, server.server_address[:2])
