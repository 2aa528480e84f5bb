"""The config file as ``atlantic status`` reads it: the state directory of a file it can
vouch for in one pass, without tomllib, dataclasses, the config modules or the pool's URL
parser (together ~90 ms of start-up; bench/startup.py).

It reads a strict subset of TOML: ``[table]`` and ``[[upstream]]`` headers, one-line
``key = value`` pairs whose value is a basic string without escapes, a decimal or hex
integer, a plain decimal, a boolean or a one-line array of strings or integers, and
comments. Every key must pass the loader's rule for it (config.py, config_upstream.py,
config_health.py, config_tls.py), or a stricter one. Anything else (other TOML, a key it
does not know, a URL with a password, an IPv6 proxy, ``daemon.metrics``, a resolver other
than the default) gives None and the caller runs the full loader. So this only ever says
yes where the loader says yes: every refusal, and its one line, is the loader's
(tests/test_config_fast.py holds the two together).
"""

from __future__ import annotations

# Patterns are compiled on first use (re's cache), only for the keys a file has: a file
# of the shipped shape compiles none (an `re` compile is ~0.2-1 ms each).
# Stricter than the loader's rules: a name of letters, digits, '.', '-', '_' (no port, no IPv6).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PROXY = rf"https?://(?:[A-Za-z0-9._~-]+@)?({_LABEL}(?:\.{_LABEL})*):([1-9][0-9]{{0,4}})/?"
_PROBE = r"(https?)://[A-Za-z0-9][A-Za-z0-9.-]*(?:[/?][!-~]*)?"
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = rf"(?:\*\.)?((?:{_DNS_LABEL}\.)+({_DNS_LABEL}))"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CIDR4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}/(?:3[0-2]|[12]?[0-9])"
_IFNAME = r"(?!\.\.?$)[A-Za-z0-9_.-]{1,15}"
_TEMPLATE = r"(?:[A-Za-z0-9._~+=-]|\{(?:user|country|session|minutes)\})*"
_COUNTRY = r"[A-Za-z0-9_-]{1,32}"


def _match(pattern: str, value):
    import re

    return re.fullmatch(pattern, value) if isinstance(value, str) else None


def _num(lo: float, hi: float, integer: bool = False):
    kind = int if integer else (int, float)
    return lambda v: not isinstance(v, bool) and isinstance(v, kind) and lo <= v <= hi


def _one_of(*choices: str):
    return lambda v: isinstance(v, str) and v in choices


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _path(limit: int):
    """config._read_daemon's and config_tls._path's rule: absolute, no '..', not '/'."""
    return lambda v: (isinstance(v, str) and v.startswith("/") and v != "/" and len(v) <= limit
                      and ".." not in v.split("/"))


def _list_of(check, limit: int = 1 << 16):
    return lambda v: isinstance(v, list) and len(v) <= limit and all(isinstance(i, str) and check(i) for i in v)


def _proxy_url(v) -> bool:
    """'direct', or http(s)://[user@]host:port with no password (a password in the file is
    refused when others may read it: the loader judges that)."""
    if v == "direct":
        return True
    m = _match(_PROXY, v)
    return m is not None and len(m[1]) <= 253 and int(m[2]) <= 65535


def _probe_url(schemes: tuple[str, ...]):
    def ok(v) -> bool:
        m = _match(_PROBE, v)
        return m is not None and len(v) <= 2048 and m[1] in schemes
    return ok


def _domain(v: str) -> bool:
    """forwarder.intercept.normalize_pattern's rule, stricter: ASCII labels, a dot, the last label no number."""
    m = _match(_DOMAIN, v)
    return m is not None and len(m[1]) <= 253 and not m[2].isdigit()


_PORTS = _num(1, 65535, integer=True)
_RULES = {
    "upstream": {
        "url": _proxy_url, "password_file": _is_str, "ca_file": _is_str, "connect_timeout_s": _num(0.1, 120),
        "username_template": lambda v: isinstance(v, str) and len(v) <= 256 and _match(_TEMPLATE, v) is not None,
        "country": lambda v: _match(_COUNTRY, v) is not None,
        "session_minutes": _num(1, 1440, integer=True),
    },
    "pool": {
        "idle_timeout_s": _num(1, 3600), "max_per_endpoint": _num(1, 1024, True), "max_connections": _num(1, 4096, True),
        "warm_tunnels": _num(0, 64, True), "ping_interval_s": _num(1, 600),
        "plain_http": _one_of("tunnel", "forward"),
    },
    "capture": {
        "ipv6": _one_of("capture", "block"), "tcp": _one_of("redirect", "tun"), "udp": _one_of("drop", "reject"),
        "kill_switch": _is_bool, "lockdown": _is_bool, "allow_dhcp": _is_bool,
        "lan": _list_of(lambda i: _match(_CIDR4, i) is not None),
        "allow_interfaces": _list_of(lambda i: _match(_IFNAME, i.removesuffix("*")) is not None),
        "ports": lambda v: isinstance(v, list) and all(_PORTS(i) for i in v),
        "other_ports": _one_of("tunnel", "reject"), "dns_resolver": _one_of("9.9.9.9:53"),
    },
    "tun": {
        "name": lambda v: _match(_IFNAME, v) is not None,
        "address": _one_of("198.18.0.1/30"), "address6": _one_of("fd00:a71a::1/126"),
        "mtu": _num(1280, 65535, True), "offload": _is_bool,
    },
    "routing": {
        "table": lambda v: _num(1, 2**31 - 1, True)(v) and v not in (253, 254, 255),
        "fwmark": _num(1, 2**32 - 1, True), "rule_priority": _num(2, 32765, True),
    },
    "daemon": {
        "state_dir": _path(200), "log_level": _one_of("debug", "info", "warning", "error"),
        "idle_timeout_s": _num(1, 86400), "head_timeout_s": _num(1, 3600),
        "max_flows": _num(0, 1_000_000, True), "max_open_files": _num(1024, 1_048_576, True),
    },
    "health": {
        "enabled": _is_bool, "probe_url": _probe_url(("http", "https")),
        "echo_url": lambda v: v == "" or _probe_url(("http",))(v),
        "expected_status": _num(100, 599, True), "probe_timeout_s": _num(0.5, 60),
        "active_interval_s": _num(1, 3600), "standby_interval_s": _num(1, 86400), "echo_interval_s": _num(10, 86400),
        "fail_threshold": _num(1, 100, True), "recover_successes": _num(1, 100, True), "failback_hold_s": _num(0, 1800),
    },
    "tls": {"intercept": _list_of(_domain, 256), "ca_dir": _path(4096), "origin_ca_file": _path(4096)},
}
MAX_UPSTREAMS = 8  # = config_upstream.MAX_UPSTREAMS, and the default below = DaemonConfig's (a test holds them)
DEFAULT_STATE_DIR = "/run/atlantic"


def _is_comment(rest: str) -> bool:
    """Nothing, or a comment without control characters (TOML's rule, stricter: printable)."""
    return not rest or rest[0] == "#" and rest.replace("\t", " ").isprintable()


def _scalar(text: str):
    """(value, the text after it) for a scalar in the subset at the start of ``text``, or None."""
    if text[:1] == '"':
        end = text.find('"', 1)
        value = text[1:end]
        if end < 0 or "\\" in value or not value.replace("\t", " ").isprintable():
            return None  # escapes and control characters: the loader's TOML reader judges them
        return value, text[end + 1:]
    rest = text.lstrip("0123456789abcdefABCDEFxtruls.")
    token = text[:len(text) - len(rest)]
    if token in ("true", "false"):
        return token == "true", rest
    if token[:2] == "0x" and 2 < len(token) <= 18 and _is_digits(token[2:], "0123456789abcdefABCDEF"):
        return int(token, 16), rest
    whole, dot, fraction = token.partition(".")
    if not (_is_digits(whole, "0123456789") and len(whole) < 20 and (whole == "0" or whole[0] != "0")):
        return None
    if not dot:
        return int(whole), rest
    return (float(token), rest) if _is_digits(fraction, "0123456789") and len(fraction) <= 30 else None


def _is_digits(text: str, digits: str) -> bool:
    return bool(text) and not text.strip(digits)


def _value(text: str):
    """(value, the text after it) for a scalar or a one-line array of scalars, or None."""
    if text[:1] != "[":
        return _scalar(text)
    items, rest = [], text[1:].lstrip(" \t")
    while rest[:1] != "]":
        if (got := _scalar(rest)) is None:
            return None
        item, rest = got
        items.append(item)
        rest = rest.lstrip(" \t")
        if rest[:1] == ",":
            rest = rest[1:].lstrip(" \t")
        elif rest[:1] != "]":
            return None
    return items, rest[1:]


def parse_simple(text: str) -> tuple[dict[str, dict], list[dict]] | None:
    """The tables (by name) and the upstream tables of a file in the subset, or None.

    Keys are not checked here: one not in ``_RULES`` (quoted, dotted, misspelt) makes
    ``vouched_state_dir`` say no."""
    tables: dict[str, dict] = {}
    upstreams: list[dict] = []
    current = None  # the table keys go to; None: the root table, where this reader allows none
    for line in text.split("\n"):
        line = line.lstrip(" \t")
        if not line or line[0] == "#":
            if not _is_comment(line):
                return None
            continue
        if line.startswith("[["):
            name, sep, rest = line[2:].partition("]]")
            if name != "upstream" or not sep or "upstream" in tables:  # [upstream] and [[upstream]]: a TOML error
                return None
            current = {}
            upstreams.append(current)
        elif line[0] == "[":
            name, sep, rest = line[1:].partition("]")
            if not sep or name not in _RULES or name in tables or (name == "upstream" and upstreams):
                return None  # unknown, or a table defined twice (a TOML error)
            current = tables[name] = {}
            if name == "upstream":
                upstreams.append(current)
        else:
            key, sep, rest = line.partition("=")
            key = key.rstrip(" \t")
            if not sep or current is None or key in current or (got := _value(rest.lstrip(" \t"))) is None:
                return None
            current[key], rest = got
        if not _is_comment(rest.lstrip(" \t")):
            return None
    return tables, upstreams


def vouched_state_dir(text: str) -> str | None:
    """``daemon.state_dir`` of ``text`` when the full loader would surely accept it (its
    file mode and the directory itself are the caller's to check), else None."""
    parsed = parse_simple(text)
    if parsed is None:
        return None
    tables, upstreams = parsed
    for name, table in tables.items():
        rules = _RULES[name]
        if name != "upstream" and not all(k in rules and rules[k](v) for k, v in table.items()):
            return None
    rules = _RULES["upstream"]
    for up in upstreams:
        if not all(k in rules and rules[k](v) for k, v in up.items()):
            return None
        if "{country}" in up.get("username_template", "") and "country" not in up:
            return None  # the loader renders the template: a field without a value is refused
    if len(upstreams) > 1 and (len(upstreams) > MAX_UPSTREAMS or any(u.get("url", "direct") == "direct"
                                                                       for u in upstreams)):
        return None
    capture, health = tables.get("capture", {}), tables.get("health", {})
    if capture.get("lockdown") and not capture.get("kill_switch", True):
        return None
    if health.get("enabled") is False and len(upstreams) > 1:
        return None
    return tables.get("daemon", {}).get("state_dir", DEFAULT_STATE_DIR)
