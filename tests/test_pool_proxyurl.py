"""The proxy URL cache: rendering once into a snapshot, sticky-session rotation (time passed in)."""

from __future__ import annotations

import base64
import itertools

import pytest

from atlantic.pool.upstream import UpstreamURLError
from atlantic.pool.plan import PoolKey
from atlantic.pool.proxyurl import ProxyConfig, ProxyURLCache, TemplateError, render_snapshot

TEMPLATE = "customer-{user}-cc-{country}-sessid-{session}-sesstime-{minutes}"


def _sessions():
    counter = itertools.count(1)
    return lambda: f"s{next(counter)}"


def _decode(auth: str) -> str:
    return base64.b64decode(auth.removeprefix("Basic ")).decode()


def test_plain_url_renders_header_and_key():
    """A plain URL: ready-made Basic header; the key holds endpoint and credentials."""
    snap = render_snapshot(ProxyConfig("http://bob:pw@proxy.example:3128"), now=0)
    assert _decode(snap.proxy_authorization) == "bob:pw"
    assert snap.key == PoolKey("http://proxy.example:3128", snap.proxy_authorization)
    assert snap.rotate_at is None and "pw" not in repr(snap)


def test_direct_and_no_credentials():
    """direct has no header and a direct key; a proxy without user sends no header."""
    assert render_snapshot(ProxyConfig("direct"), 0).key == PoolKey("direct")
    snap = render_snapshot(ProxyConfig("http://p:8080"), 0)
    assert snap.proxy_authorization is None and snap.key == PoolKey("http://p:8080", "")


def test_template_renders_user_country_session_minutes():
    """The provider template gets the URL's user, params, the session id and minutes."""
    cfg = ProxyConfig("http://acme:pw@gw.example:10000", TEMPLATE, {"country": "de"}, 10)
    snap = render_snapshot(cfg, now=100, session="abc")
    assert snap.upstream.username == "customer-acme-cc-de-sessid-abc-sesstime-10"
    assert _decode(snap.proxy_authorization) == "customer-acme-cc-de-sessid-abc-sesstime-10:pw"
    assert snap.rotate_at == 100 + 600 and not snap.is_due(699) and snap.is_due(700)


def test_template_errors_are_one_line():
    """Unknown or missing template fields fail with one clear line."""
    with pytest.raises(TemplateError, match="unknown field.*zone") as e:
        render_snapshot(ProxyConfig("http://u:p@h:1", "{user}-{zone}"), 0)
    assert "\n" not in str(e.value)
    with pytest.raises(TemplateError, match="needs a value for country"):
        render_snapshot(ProxyConfig("http://u:p@h:1", "{user}-cc-{country}"), 0)
    with pytest.raises(UpstreamURLError):
        render_snapshot(ProxyConfig("ftp://h:1"), 0)


def test_cache_keeps_session_until_due_then_rotates():
    """refresh() keeps the sticky session (same key) until `minutes` pass, then draws anew."""
    cfg = ProxyConfig("http://acme:pw@gw:1", TEMPLATE, {"country": "us"}, 1)
    cache = ProxyURLCache(cfg, now=0, new_session=_sessions())
    first = cache.current
    assert first.session == "s1"
    assert cache.refresh(30) is False and cache.current.session == "s1"
    assert cache.current is not first  # replaced whole, never mutated
    assert cache.current.rotate_at == 60  # expiry counts from when the session was drawn
    assert cache.seconds_until_refresh(50) == 10
    assert cache.refresh(60) is True
    assert cache.current.session == "s2" and cache.current.key != first.key
    assert cache.current.rotate_at == 120


def test_forced_rotation_and_config_switch():
    """rotate=True draws a new session at once; set_config renders the new config now."""
    cfg = ProxyConfig("http://acme:pw@gw:1", TEMPLATE, {"country": "us"}, 5)
    cache = ProxyURLCache(cfg, now=0, new_session=_sessions())
    assert cache.refresh(1, rotate=True) and cache.current.session == "s2"
    cache.set_config(ProxyConfig("http://other:pw@gw2:2"), now=2)
    assert cache.current.upstream.host == "gw2" and cache.current.session is None
    assert cache.seconds_until_refresh(2) == 30


def test_template_without_session_never_rotates():
    """A template with no {session} has no sticky session and no rotation deadline."""
    cache = ProxyURLCache(ProxyConfig("http://a:b@gw:1", "{user}-cc-{country}", {"country": "fr"}),
                          now=0, new_session=_sessions())
    assert cache.current.session is None and cache.current.rotate_at is None
    assert cache.refresh(10_000) is False
