"""Human-readable ``atlantic status``: a small table, the counters that matter first."""

from __future__ import annotations


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float) -> str:
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def status_rows(report: dict) -> list[tuple[str, str]]:
    """The (label, value) rows shown for a status report (pure, for tests)."""
    rows = [("state", str(report.get("state", "down")))]
    if report.get("problem"):
        rows.append(("problem", report["problem"]))
    if report.get("state") != "up":
        return rows
    rows += [
        ("pid", str(report.get("pid"))),
        ("upstream", str(report.get("upstream"))),
        ("device", f"{report.get('tun')} (MTU {report.get('mtu')}, offload {'on' if report.get('offload') else 'off'})"),
        ("uptime", _duration(report.get("uptime_s", 0))),
        ("flows", f"{report.get('flows_open', 0)} open, {report.get('flows_total', 0)} total, {report.get('flows_failed', 0)} failed"),
        ("traffic", f"{_size(report.get('bytes_up', 0))} up, {_size(report.get('bytes_down', 0))} down"),
    ]
    if "ipv6" in report:
        rows.append(("capture", f"IPv6 {report['ipv6']}, kill switch {'on' if report.get('kill_switch') else 'off'}, "
                                f"other UDP: {report.get('udp_policy', 'drop')}"))
    pool = report.get("pool")
    if pool:
        ttfb = pool.get("ttfb_ms_p50")
        rows.append(("pool", f"{pool.get('requests', 0)} requests, {pool.get('reused', 0)} on reused connections, "
                             f"{pool.get('connections_opened', 0)} connections opened, {pool.get('h2_streams', 0)} h2 streams, "
                             f"tunnels {pool.get('tunnels_warm', 0)} warm / {pool.get('tunnels_cold', 0)} cold"
                             + (f", TTFB p50 {ttfb:.1f} ms" if ttfb is not None else "")))
    dns = report.get("dns")
    if dns:
        rows.append(("dns", f"{dns.get('queries', 0)} queries, {dns.get('answered_fake', 0)} fake answers, "
                            f"{dns.get('forwarded', 0)} forwarded through the upstream"))
    rows += _tls_rows(report.get("tls"))
    rows += _health_rows(report.get("health"))
    leaks = report.get("leaks")
    if isinstance(leaks, dict):
        last = ", ".join(f"{name} {c.get('result')}" for name, c in sorted((leaks.get("last") or {}).items()))
        rows.append(("leaks", f"{'sealed' if leaks.get('sealed') else 'LEAK: see the log'}; "
                              f"{leaks.get('blocked_packets', 0)} packets blocked since up"
                              + (f"; last checks: {last}" if last else "")))
    net = report.get("network")
    if isinstance(net, dict):
        if net.get("last_change"):
            rows.append(("network", f"{net.get('changes', 0)} changes; last: {net['last_change']}"))
        if blocked := net.get("blocked_routes"):
            rows.append(("blocked", f"{', '.join(blocked)} (routes of their own: list a prefix in capture.lan "
                                    "to reach it directly)"))
    err = report.get("last_error")
    if err:
        rows.append(("last error", f"{err.get('message')} ({err.get('count', 1)}x, {err.get('age_s', 0):.0f} s ago)"))
    return rows


def _tls_rows(tls) -> list[tuple[str, str]]:
    """TLS termination: the list, what it did, and the names passing through untouched."""
    if not isinstance(tls, dict):
        return []
    rows = [("tls", f"intercepting {', '.join(map(str, tls.get('intercept') or [])) or 'nothing'}: "
                    f"{tls.get('terminated', 0)} terminated ({tls.get('h2', 0)} h2), "
                    f"{tls.get('handshake_failures', 0)} handshakes failed; origin connections "
                    f"{tls.get('origin_connections_opened', 0)} opened / {tls.get('origin_connections_reused', 0)} reused")]
    passing = tls.get("pass_through") or []
    if passing:
        shown = "; ".join(f"{p.get('name')} ({p.get('reason')}, {int(p.get('seconds_left', 0)) // 60} min left)"
                          for p in passing[:10])
        rows.append(("pass-through", shown + (f"; and {len(passing) - 10} more" if len(passing) > 10 else "")))
    return rows


def _health_rows(health) -> list[tuple[str, str]]:
    """One row per upstream, in priority order: state, probe, exit."""
    if not isinstance(health, dict):
        return []
    rows = []
    if health.get("all_down"):
        rows.append(("health", "every upstream is down: flows are refused"))
    for i, up in enumerate(health.get("upstreams") or [], 1):
        parts = [str(up.get("state")) + (" (active)" if up.get("active") else "")]
        if up.get("latency_ms") is not None:
            parts.append(f"probe {up['latency_ms']:.0f} ms")
        elif up.get("last_result"):
            parts.append(str(up["last_result"]))
        if up.get("exit_ip"):
            parts.append(f"exit {up['exit_ip']}" + (f" ({up['exit_country']})" if up.get("exit_country") else ""))
        if up.get("alert"):
            parts.append(f"ALERT: {up['alert']}")
        rows.append((f"upstream {i}", f"{up.get('url')}: " + ", ".join(parts)))
    return rows


def format_status(report: dict) -> str:
    """The status report as an aligned two-column table (no rich: status must start fast)."""
    rows = status_rows(report)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
