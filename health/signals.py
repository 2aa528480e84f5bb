"""Passive health signals, pure: did a response come from a failing proxy, or from the origin?

The pool reports what its flows meet (a refused connect, a 407, a provider error page) as
a :class:`PassiveSignal`; the health state only schedules a probe on one, never changes
state by itself. :func:`classify_proxy_response` reads a proxy's response status and
headers. Its rule: an error counts against the proxy only when the proxy says the fault
is its own; a 502/503/504 with no provider header came from the origin (or names the
origin as the culprit) and never counts. Misjudging costs little either way: a signal
only asks for a probe (spaced, so a storm asks for few), and the probe decides.

Mapping (first rule that applies wins; a status below 400 is never a failure):

1. 407 -> AUTH_FAILED_407 (origins do not send 407 to a proxy's client).
2. A Bright Data code (``x-brd-err-code``, or the ``code:`` opening ``details`` of a
   Proxy-Status entry) by family: ``target_*`` (DNS, the target's own failures) and
   ``policy_*`` (compliance blocks of one target) do not count: another upstream meets
   the same target, and a policy block is no cue to rotate. ``client_*`` (credentials,
   suspended account, zone limits), ``peer_*`` (no exit for this targeting) and
   ``server_*`` count: the upstream cannot carry traffic as configured. A few
   ``client_*`` codes are about one request (:data:`_BRD_PER_REQUEST`) and do not count.
3. RFC 9209 Proxy-Status, the last entry (the intermediary nearest us, that is our
   proxy) with an ``error`` parameter: errors about reaching the next hop (``dns_*``,
   ``destination_*``, ``connection_*``, ``tls_*``, ``http_response_*``, ...) are the
   destination's; ``proxy_internal_error``, ``proxy_configuration_error``,
   ``proxy_loop_detected`` and ``connection_limit_reached`` (the proxy's own limit) are
   the proxy's. ``http_request_error``/``http_request_denied`` are the request or policy.
4. A provider header without a code we know (``x-brd-error``, ``x-luminati-error``,
   Oxylabs ``X-Error-Description``, an unknown code or error token) -> by status:
   429 (the plan's concurrency/rate limit) and 5xx (incl. Oxylabs 522/525) count;
   other 4xx (bad request, restricted target) do not.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ORIGIN", "PassiveSignal", "ProxyVerdict", "classify_proxy_response", "one_line"]

REASON_MAX = 200
_VALUE_MAX = 4096  # bytes of a header value we look at: a huge value costs no more


class PassiveSignal(enum.Enum):
    """What a flow met at an upstream that may mean the upstream is failing."""

    CONNECT_REFUSED = "connect_refused"
    CONNECT_RESET = "connect_reset"
    CONNECT_TIMEOUT = "connect_timeout"
    AUTH_FAILED_407 = "auth_failed_407"
    PROXY_ERROR = "proxy_error"  # a 5xx or provider error from the proxy itself


@dataclass(frozen=True, slots=True)
class ProxyVerdict:
    """Whether a response counts against the proxy, as what, and why (one printable line)."""

    is_proxy_failure: bool
    signal: PassiveSignal | None
    reason: str | None


ORIGIN = ProxyVerdict(False, None, None)  # the origin answered: nothing to say

_PROXY_STATUS_PROXY_SIDE = frozenset({
    "proxy_internal_error", "proxy_configuration_error", "proxy_loop_detected",
    "connection_limit_reached",
})
# Every other RFC 9209 type: the next hop (destination), or the request/policy.
_PROXY_STATUS_NOT_PROXY = frozenset({
    "dns_timeout", "dns_error", "destination_not_found", "destination_unavailable",
    "destination_ip_prohibited", "destination_ip_unroutable", "connection_refused",
    "connection_terminated", "connection_timeout", "connection_read_timeout",
    "connection_write_timeout", "tls_protocol_error", "tls_certificate_error",
    "tls_alert_received", "http_request_error", "http_request_denied",
    "http_response_incomplete", "http_response_header_section_size",
    "http_response_header_size", "http_response_body_size",
    "http_response_trailer_section_size", "http_response_trailer_size",
    "http_response_transfer_coding", "http_response_content_coding",
    "http_response_timeout", "http_upgrade_failed", "http_protocol_error",
    "proxy_internal_response",
})
_BRD_CODE = re.compile(r"(client|policy|peer|target|server)[_-](\d+)", re.ASCII)
_BRD_COUNTS = {"client": True, "peer": True, "server": True, "policy": False, "target": False}
# client_* codes about one request, not the account: no protocol, no host, the client
# went away, the target is outside the zone's allow/deny list.
_BRD_PER_REQUEST = frozenset({"client_10070", "client_10080", "client_10140",
                              "client_10250", "client_10260"})
_PROVIDER_TEXT = ("x-brd-err-msg", "x-brd-error", "x-luminati-error", "x-error-description")


def one_line(text: object, limit: int = REASON_MAX) -> str:
    """``text`` as one printable ASCII line of at most ``limit`` characters (never raises)."""
    try:
        s = text.decode("ascii", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
    except Exception:  # a str() that raises: say so rather than fail the caller
        s = "<unprintable>"
    s = "".join(c if " " <= c <= "~" else " " if c in "\t\r\n" else "?" for c in s[:limit * 4])
    s = " ".join(s.split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


def classify_proxy_response(
    status: int,
    headers: Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]],
) -> ProxyVerdict:
    """Classify an upstream proxy's response head (see the module docstring for the rules).

    ``headers`` as h11 gives them (bytes) or as str pairs, any case; malformed entries
    are skipped and odd bytes shown as ``?``: this never raises.
    """
    try:
        code = int(status)
    except (TypeError, ValueError):
        return ProxyVerdict(False, None, "unparsable status " + one_line(status, 40))
    if code < 400:
        return ORIGIN
    h = _collect(headers)
    detail = next((h[name] for name in _PROVIDER_TEXT if name in h), None)
    entry = _last_proxy_status(h.get("proxy-status", ""))
    if code == 407:
        why = detail or _entry_text(entry) or "auth failed"
        return _verdict(PassiveSignal.AUTH_FAILED_407, f"407 from proxy: {why}")
    brd = h.get("x-brd-err-code", "") or (entry or {}).get("details", "")
    m = _BRD_CODE.match(brd.strip())
    if m:
        family, name = m.group(1), f"{m.group(1)}_{m.group(2)}"
        text = f"{code} {name}: {detail or brd}"
        if _BRD_COUNTS[family] and name not in _BRD_PER_REQUEST:
            return _verdict(PassiveSignal.PROXY_ERROR, text)
        return ProxyVerdict(False, None, one_line(text))
    if entry is not None and "error" in entry:
        error = entry["error"].lower()
        text = f"{code} proxy-status {_entry_text(entry)}"
        if error in _PROXY_STATUS_PROXY_SIDE:
            return _verdict(PassiveSignal.PROXY_ERROR, text)
        if error in _PROXY_STATUS_NOT_PROXY:
            return ProxyVerdict(False, None, one_line(text))
        detail = detail or _entry_text(entry)  # an extension type: judge by status below
    if detail is None and "x-brd-err-code" not in h:
        return ORIGIN  # no provider header: the origin answered through the proxy
    text = f"{code} from proxy: {detail or h.get('x-brd-err-code') or 'provider error'}"
    if code == 429 or code >= 500:
        return _verdict(PassiveSignal.PROXY_ERROR, text)
    return ProxyVerdict(False, None, one_line(text))


def _verdict(signal: PassiveSignal, text: str) -> ProxyVerdict:
    return ProxyVerdict(True, signal, one_line(text))


def _collect(headers: object) -> dict[str, str]:
    """Lower-cased names -> values (repeats joined with ``,``); bad entries skipped."""
    out: dict[str, str] = {}
    try:
        items = iter(headers)  # type: ignore[call-overload]
    except TypeError:
        return out
    for item in items:
        try:
            raw_name, raw_value = item
            name = _text(raw_name).strip().lower()
            value = _text(raw_value)[:_VALUE_MAX]
        except Exception:  # not a pair, or a str() that raises: skip it, never fail
            continue
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _text(v: object) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v[:_VALUE_MAX]).decode("latin-1")
    if isinstance(v, str):
        return v
    raise TypeError("header name or value is neither str nor bytes")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (backslash escapes inside) and parentheses."""
    parts, cur, quoted, depth, i = [], [], False, 0, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i:i + 2])
                i += 2
                continue
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _bare(value: str) -> str:
    """An sf-string unquoted and unescaped; a token or number as it is."""
    v = value.strip()
    if v.startswith('"'):
        v = v[1:-1] if len(v) > 1 and v.endswith('"') else v[1:]
        return re.sub(r"\\(.)", r"\1", v)
    return v


def _last_proxy_status(value: str) -> dict[str, str] | None:
    """The last Proxy-Status entry (RFC 9209: the last is nearest us) as name + params.

    Tolerant of RFC 8941 violations: whatever does not parse as ``key[=value]`` is skipped.
    """
    members = [m for m in _split_top(value, ",") if m.strip()]
    if not members:
        return None
    first, *params = _split_top(members[-1], ";")
    entry = {"": _bare(first)}
    for p in params:
        key, _, val = p.partition("=")
        key = key.strip().lower()
        if key:
            entry[key] = _bare(val) if val else "?1"
    return entry


def _entry_text(entry: dict[str, str] | None) -> str:
    if not entry:
        return ""
    text = f"{entry['']}: {entry.get('error', '')}".rstrip(": ")
    return f"{text} ({entry['details']})" if entry.get("details") else text
