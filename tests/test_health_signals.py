"""Proxy response classification, pure: the proxy's own failures count, the origin's never do,
and no header, however broken, makes it raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlantic.health.signals import (
    ORIGIN,
    PassiveSignal,
    ProxyVerdict,
    classify_proxy_response,
    one_line,
)

AUTH, PROXY = PassiveSignal.AUTH_FAILED_407, PassiveSignal.PROXY_ERROR
BRD_PS = 'brd.superproxy.io; received-status=400; error=destination_ip_unroutable; ' \
         'details="client-10060: Requested IP is not allocated to this zone"'

# (status, headers, counts against the proxy, signal, text the reason contains)
TABLE = [
    (200, [("x-brd-err-code", "server_50000")], False, None, None),
    (407, [], True, AUTH, "407 from proxy: auth failed"),
    (407, [("X-Brd-Err-Code", "client_10000"), ("x-brd-error", "Authentication failed")],
     True, AUTH, "Authentication failed"),
    (407, [("X-Error-Description", "Access denied: traffic limit reached.")],
     True, AUTH, "traffic limit"),
    # no provider header: the origin (or its own gateway) answered; never counts
    (502, [], False, None, None),
    (503, [("Server", "nginx"), ("Retry-After", "5")], False, None, None),
    (504, [("Via", "1.1 squid")], False, None, None),
    # Bright Data codes by family
    (502, [("x-brd-err-code", "target_40001"), ("x-brd-error", "Could not resolve host x.test")],
     False, None, "target_40001: Could not resolve host x.test"),
    (403, [("x-brd-err-code", "policy_20040"), ("x-brd-err-msg", "Forbidden host")],
     False, None, "policy_20040"),
    (429, [("x-brd-err-code", "policy_20220")], False, None, "policy_20220"),
    (502, [("x-brd-err-code", "client_10100"), ("x-brd-error", "Zone has reached usage limit")],
     True, PROXY, "client_10100: Zone has reached usage limit"),
    (429, [("x-brd-err-code", "client_10110")], True, PROXY, "client_10110"),
    (403, [("x-brd-err-code", "client_10250")], False, None, "client_10250"),  # one target
    (502, [("x-brd-err-code", "peer_30030")], True, PROXY, "peer_30030"),
    (503, [("x-brd-err-code", "server_50000")], True, PROXY, "server_50000"),
    (502, [("x-luminati-error", "Proxy Error: no peers available")], True, PROXY, "no peers"),
    (403, [("x-luminati-error", "Forbidden host")], False, None, "Forbidden host"),
    # Oxylabs: X-Error-Description only on errors of their infrastructure
    (522, [("X-Error-Description", "Timeout")], True, PROXY, "522 from proxy: Timeout"),
    (525, [("X-Error-Description", "No exit found")], True, PROXY, "No exit found"),
    (403, [("X-Error-Description", "Access denied: restricted target")], False, None, "restricted"),
    (400, [("X-Error-Description", "Bad request")], False, None, "Bad request"),
    # RFC 9209 Proxy-Status
    (502, [("Proxy-Status", "squid; error=connection_refused")], False, None, "connection_refused"),
    (502, [("Proxy-Status", 'p; error=dns_error; rcode="NXDOMAIN"')], False, None, "dns_error"),
    (503, [("Proxy-Status", "p; error=destination_unavailable")], False, None, "destination_unav"),
    (504, [("Proxy-Status", "p; error=http_response_timeout")], False, None, "http_response_t"),
    (500, [("Proxy-Status", "p; error=proxy_internal_error")], True, PROXY, "proxy_internal_error"),
    (503, [("Proxy-Status", "p; error=connection_limit_reached")], True, PROXY, "connection_limit"),
    (502, [("Proxy-Status", "p; error=proxy_loop_detected")], True, PROXY, "proxy_loop"),
    (403, [("Proxy-Status", "p; error=http_request_denied")], False, None, "http_request_denied"),
    (502, [("Proxy-Status", "p; error=future_error_type")], True, PROXY, "future_error_type"),
    (400, [("Proxy-Status", "p; error=future_error_type")], False, None, "future_error_type"),
    # the last entry is our proxy: an error from one nearer the origin is the origin's
    (502, [("Proxy-Status", "origin-cdn; error=proxy_internal_error, ours")], False, None, None),
    (503, [("Proxy-Status", "cdn"), ("proxy-status", "ours; error=connection_limit_reached")],
     True, PROXY, "ours: connection_limit_reached"),
    (500, [("Proxy-Status", 'p; error=proxy_internal_error; details="a, b; c \\"q\\""')],
     True, PROXY, 'p: proxy_internal_error (a, b; c "q")'),
    # a Bright Data code in details wins over the RFC type it was filed under
    (400, [("Proxy-Status", BRD_PS)], True, PROXY, "client_10060"),
    (502, [("Proxy-Status", 'brd; error=dns_error; details="target_40001: no such host"')],
     False, None, "target_40001"),
    # h11 hands bytes
    (502, [(b"X-BRD-ERR-CODE", b"server_50000")], True, PROXY, "server_50000"),
    (502, ((b"proxy-status", b"p; error=connection_timeout"),), False, None, "connection_timeout"),
]


@pytest.mark.parametrize(("status", "headers", "counts", "signal", "text"), TABLE)
def test_classification_table(status, headers, counts, signal, text):
    """Each row: who is at fault, as which signal, and a reason naming the provider's words."""
    v = classify_proxy_response(status, headers)
    assert (v.is_proxy_failure, v.signal) == (counts, signal)
    if text is None:
        assert v == ORIGIN or not v.is_proxy_failure
    else:
        assert text in v.reason


@pytest.mark.parametrize("headers", [
    None, 42, "not headers", [None, 1, ("only-one",), ("a", "b", "c"), (1, 2)],
    [(b"x-brd-err-code", b"server_5\xff\xfe"), (b"\xff\x00", b"\x80")],
    [("Proxy-Status", ";;;,,,=;=\"unterminated")],
    [("Proxy-Status", "(inner list); error=proxy_internal_error")],
    [("Proxy-Status", "p; error")], [("Proxy-Status", "")], [("Proxy-Status", " , ,")],
])
def test_malformed_headers_never_raise(headers):
    """Garbage, missing values or non-ASCII bytes: a verdict, never an exception."""
    for status in (407, 502, 200):
        assert isinstance(classify_proxy_response(status, headers), ProxyVerdict)


def test_huge_and_control_character_values_give_one_short_printable_reason():
    """A megabyte of error text with newlines and escapes becomes one capped printable line."""
    evil = "boom\r\nSet-Cookie: x=1\x1b[2J" + "\u00e9" * 10 + "A" * 1_000_000
    v = classify_proxy_response(503, [("x-error-description", evil)])
    assert v.is_proxy_failure and v.signal is PROXY
    assert len(v.reason) <= 200 and v.reason.isprintable() and v.reason.isascii()
    assert v.reason.startswith("503 from proxy: boom Set-Cookie: x=1?[2J??????????AAA")
    v = classify_proxy_response(502, [(b"x-brd-err-code", b"client_10100"),
                                      (b"x-brd-err-msg", b"limit\n\xe9t\xe9 \x00")])
    assert v.reason == "502 client_10100: limit ?t? ?"


def test_unparsable_status_is_not_a_failure():
    """A status that is no integer is reported, not counted."""
    v = classify_proxy_response("abc", [])  # type: ignore[arg-type]
    assert not v.is_proxy_failure and v.reason == "unparsable status abc"


def test_one_line():
    """Reasons are one printable ASCII line, capped with an ellipsis."""
    assert one_line("a\tb\n\nc") == "a b c"
    assert one_line(b"caf\xc3\xa9") == "caf??"
    assert one_line("x" * 300, 10) == "xxxxxxx..."


_TEXT = st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
_NAMES = st.sampled_from(["proxy-status", "x-brd-err-code", "x-brd-err-msg", "x-brd-error",
                          "x-luminati-error", "x-error-description", "server", "via"])


@settings(max_examples=400, deadline=None)
@given(st.integers(100, 599), st.lists(st.one_of(
    st.tuples(_NAMES, _TEXT),
    st.tuples(_NAMES.map(str.encode), st.binary(max_size=300)),
    st.tuples(_TEXT, _TEXT),
), max_size=8))
def test_any_response_gives_a_sane_verdict(status, headers):
    """Random heads never raise; the reason is one printable line; below 400 never counts."""
    v = classify_proxy_response(status, headers)
    assert v.reason is None or (len(v.reason) <= 200 and v.reason.isprintable()
                                and "\n" not in v.reason)
    assert v.is_proxy_failure == (v.signal is not None)
    if status < 400:
        assert v == ORIGIN
    if status == 407:
        assert v.signal is AUTH


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([500, 502, 503, 504]),
       st.lists(st.tuples(st.sampled_from(["server", "via", "content-type", "x-cache"]),
                          st.text(max_size=50)), max_size=6))
def test_a_5xx_without_provider_headers_never_counts(status, headers):
    """An origin's 502/503/504 (no provider header, no Proxy-Status) is never the proxy's fault."""
    assert classify_proxy_response(status, headers) == ORIGIN
