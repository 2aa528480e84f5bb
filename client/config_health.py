"""The [health] section: the probe and echo URLs, the monitor's intervals and thresholds.

Pure: text in, problems out. The URLs are fetched through the proxy (the probe: GET for
http://, CONNECT for https://; the echo: GET, so it must be http://), so only their form
is checked here; whether they answer is the monitor's business, shown in ``status``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from atlantic.client.config import ConfigProblem, HealthSettings, _Reader

MAX_URL = 2048


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``url`` cannot be probed, or None."""
    if len(url) > MAX_URL or not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        return f"expected a URL of at most {MAX_URL} printable ASCII characters without spaces"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        return f"expected a URL such as http://cp.cloudflare.com/generate_204 ({exc})"
    if parts.scheme not in schemes or not parts.hostname:
        return f"expected a {' or '.join(s + '://' for s in schemes)} URL with a host, got {url[:80]!r}"
    if parts.username or parts.password:
        return "expected a URL without user or password (the proxy's credentials are used, never these)"
    return None


def read_health(table: dict[str, Any], problems: list[ConfigProblem]) -> HealthSettings:
    """The [health] table, every problem recorded in ``problems``."""
    d = HealthSettings()
    r = _Reader(table, "health", problems)
    probe_url = r.get("probe_url", str, d.probe_url, "an http:// or https:// URL to probe through each upstream")
    if (why := _url_problem(probe_url, ("http", "https"))) is not None:
        r._bad("probe_url", why)
        probe_url = d.probe_url
    echo_url = r.get("echo_url", str, d.echo_url, 'an http:// URL answering JSON with the address it saw, or "" (off)')
    if echo_url and (why := _url_problem(echo_url, ("http",))) is not None:
        r._bad("echo_url", why)
        echo_url = d.echo_url
    settings = HealthSettings(
        enabled=r.get("enabled", bool, True, "true or false"),
        probe_url=probe_url,
        expected_status=r.number("expected_status", d.expected_status, 100, 599, integer=True),
        echo_url=echo_url or None,
        probe_timeout_s=float(r.number("probe_timeout_s", d.probe_timeout_s, 0.5, 60)),
        active_interval_s=float(r.number("active_interval_s", d.active_interval_s, 1, 3600)),
        standby_interval_s=float(r.number("standby_interval_s", d.standby_interval_s, 1, 86400)),
        echo_interval_s=float(r.number("echo_interval_s", d.echo_interval_s, 10, 86400)),
        fail_threshold=r.number("fail_threshold", d.fail_threshold, 1, 100, integer=True),
        recover_successes=r.number("recover_successes", d.recover_successes, 1, 100, integer=True),
        failback_hold_s=float(r.number("failback_hold_s", d.failback_hold_s, 0, 1800)),
    )
    r.unknown_keys()
    return settings
