"""The [upstream] section: the proxy URL, its password and the username template.

Everything here is about keeping the proxy secret out of sight and rendering cheap:
a URL whose password would confuse a URL parser is refused before one sees it (so no
error ever quotes part of the password), and a username template may hold only plain
``{name}`` fields. Pure: text in, problems out.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from atlantic.client.config import ConfigProblem, UpstreamConfig, _Reader

TEMPLATE_FIELDS = ("user", "country", "session", "minutes")
MAX_TEMPLATE = 256
_FIELD_LIST = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
_COUNTRY = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def template_problem(template: str) -> str | None:
    """Why a username template is refused, or None: only plain ``{name}`` fields of
    TEMPLATE_FIELDS (no format spec such as ``{user:>1000000000000}``, no conversion, no
    attribute or index), so rendering it can never be costly."""
    if len(template) > MAX_TEMPLATE:
        return f"expected at most {MAX_TEMPLATE} characters, got {len(template)}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"malformed ({exc}): use plain fields such as {{user}}, and {{{{ }}}} for literal braces"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            return f"unknown field {{{name[:32]}}}: use only {_FIELD_LIST}"
        if spec or conversion:
            return f"field {{{name}}} has a format spec or conversion: write plain {{{name}}} (fields: {_FIELD_LIST})"
    return None


def url_secret_problem(url: str) -> str | None:
    """Why a proxy URL's user part cannot be parsed without showing the password, or None.

    '/', '?', '#' or '@' in a password end the user part early, so a URL parser would
    split the password across host and path and quote part of it in its error. The
    message never contains any of the URL.
    """
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if any(c in userinfo for c in "/?#@"):
        return ("the user name or password holds '/', '?', '#' or '@': percent-encode them (%2F %3F %23 %40), "
                "or better, leave the password out of the URL and put it in upstream.password_file")
    return None


def check_upstream_url(url: str) -> str | None:
    """Why ``url`` is not a usable upstream (one line that never shows its password), or None."""
    from atlantic.pool.upstream import parse_upstream

    if (problem := url_secret_problem(url)) is not None:
        return problem
    try:
        parse_upstream(url)
    except ValueError as exc:
        message = str(exc)
        password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
        return message.replace(password, "***") if password else message
    return None


MAX_UPSTREAMS = 8


def read_upstreams(value: Any, problems: list[ConfigProblem]) -> tuple[UpstreamConfig, ...]:
    """``[upstream]`` (one table) or ``[[upstream]]`` (a list, in priority order).

    ``direct`` cannot be one of several: failing over to it would show the machine's own
    address to every site the moment the proxies fail, the opposite of failing closed.
    """
    if isinstance(value, dict):
        return (read_upstream(value, problems),)
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        problems.append(ConfigProblem("upstream", "expected one [upstream] table, or one or more [[upstream]] tables"))
        return (UpstreamConfig(),)
    if len(value) > MAX_UPSTREAMS:
        problems.append(ConfigProblem("upstream", f"expected at most {MAX_UPSTREAMS} [[upstream]] tables, got {len(value)}"))
        value = value[:MAX_UPSTREAMS]
    ups = tuple(read_upstream(t, problems, key=f"upstream[{i + 1}]") for i, t in enumerate(value))
    if len(ups) > 1 and any(u.url == "direct" for u in ups):
        problems.append(ConfigProblem("upstream", "direct cannot be one of several upstreams: failing over to it "
                                                  "would reveal this machine's address; list proxies only"))
    return ups


def read_upstream(table: dict[str, Any], problems: list[ConfigProblem], *, key: str = "upstream") -> UpstreamConfig:
    """One upstream table (``key`` names it in messages), every problem recorded in ``problems``."""
    r = _Reader(table, key, problems)
    url = r.get("url", str, "direct", "a URL: direct, http://user@host:port or https://user@host:port")
    pw = r.get("password_file", str, None, "a path to a file holding the proxy password")
    timeout = r.number("connect_timeout_s", 10.0, 0.1, 120)
    ca = r.get("ca_file", str, None, "a path to a PEM file of CA certificates for an https:// proxy")
    template = r.get("username_template", str, None,
                     "a username template such as customer-{user}-cc-{country}-sessid-{session}")
    country = r.get("country", str, None, "a country code such as us")
    if country is not None and not _COUNTRY.match(country):
        r._bad("country", f"expected a code of 1-32 letters, digits, '-' or '_' such as us, got {country[:40]!r}")
        country = None
    minutes = r.get("session_minutes", int, None, "whole minutes a sticky session lasts")
    if minutes is not None and not 1 <= minutes <= 1440:
        problems.append(ConfigProblem(f"{key}.session_minutes", f"expected whole minutes from 1 to 1440, got {minutes}"))
        minutes = None
    r.unknown_keys()
    if (problem := check_upstream_url(url)) is not None:
        problems.append(ConfigProblem(f"{key}.url", problem))
        url = "direct"
    if template is not None and (problem := template_problem(template)) is not None:
        problems.append(ConfigProblem(f"{key}.username_template", problem))
        template = None
    if template is not None:
        from atlantic.pool.proxyurl import ProxyConfig, render_snapshot

        params = {"country": country} if country else {}
        try:
            render_snapshot(ProxyConfig(url, template, params, minutes), 0.0, "session")
        except ValueError as exc:
            problems.append(ConfigProblem(f"{key}.username_template", str(exc)))
            template = None
    return UpstreamConfig(url=url, password_file=Path(pw) if pw else None, connect_timeout_s=float(timeout),
                          ca_file=Path(ca) if ca else None, username_template=template, country=country,
                          session_minutes=minutes, key=key)
