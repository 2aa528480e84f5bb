"""parse_upstream: good URLs, bad URLs, and that the password never shows."""

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlantic.pool.upstream import (
    DIRECT,
    Upstream,
    UpstreamKind,
    UpstreamURLError,
    parse_upstream,
)


@pytest.mark.parametrize("text", ["direct", "DIRECT", " direct ", "direct://"])
def test_direct_spellings(text):
    """'direct' in any case (and direct://) is the no-proxy upstream."""
    up = parse_upstream(text)
    assert up is DIRECT
    assert up.is_direct and not up.has_credentials
    assert up.redacted() == "direct"


def test_http_with_credentials():
    """user, password, host and port are split out; the host is lower-cased."""
    up = parse_upstream("http://alice:s3cret@Proxy.Example.com:3128")
    assert up == Upstream(UpstreamKind.HTTP, "proxy.example.com", 3128, "alice", "s3cret")
    assert up.kind == "http"
    assert up.has_credentials


def test_percent_decoding_of_user_and_password():
    """Percent-encoded user and password are decoded (provider usernames carry '-', '@', ':')."""
    up = parse_upstream("http://customer-bob-cc-us%40x:p%3A%2Fw%25d@10.0.0.1:10000/")
    assert up.username == "customer-bob-cc-us@x"
    assert up.password == "p:/w%d"
    assert up.port == 10000


def test_user_without_password_and_empty_password():
    """'user@' has no password; 'user:@' has an empty one."""
    assert parse_upstream("http://u@h:1").password is None
    assert parse_upstream("http://u:@h:1").password == ""


def test_ipv6_literal_and_https():
    """An IPv6 literal in brackets parses and https is its own kind."""
    up = parse_upstream("https://u:p@[2001:db8::1]:8443")
    assert up.kind is UpstreamKind.HTTPS
    assert up.host == "2001:db8::1" and up.port == 8443
    assert up.redacted() == "https://u:***@[2001:db8::1]:8443"


def test_repr_str_and_redacted_hide_password():
    """repr, str and redacted() never contain the password."""
    up = parse_upstream("http://alice:hunter2@h:3128")
    for text in (repr(up), str(up), up.redacted(), f"{up}"):
        assert "hunter2" not in text
    assert up.redacted() == "http://alice:***@h:3128"
    assert parse_upstream("http://h:3128").redacted() == "http://h:3128"


def test_upstream_is_frozen():
    """Upstream is immutable (shared across flows and tasks)."""
    up = parse_upstream("http://h:1")
    with pytest.raises(AttributeError):
        up.port = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "url, words",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("proxy.example:3128", "not a URL"),
        ("socks5://u:p@h:1080", "unknown scheme"),
        ("ftp://h:21", "unknown scheme"),
        ("http://", "missing proxy host"),
        ("http://u:p@:3128", "missing proxy host"),
        ("http://h", "missing port"),
        ("http://[::1]", "missing port"),
        ("http://h:", "bad port"),
        ("http://h:0", "bad port"),
        ("http://h:65536", "bad port"),
        ("http://h:-1", "bad port"),
        ("http://h:80x", "bad port"),
        ("http://h:８０", "bad port"),
        ("http://:pw@h:1", "password given without a user name"),
        ("http://@h:1", "empty user name"),
        ("http://h:1/path", "no path"),
        ("http://h:1?x=1", "no path"),
        ("http://h:1#frag", "no path"),
        ("http://::1:3128", "brackets"),
        ("http://[::1:3128", "unclosed"),
        ("http://[nothex]:1", "not an IPv6 address"),
        ("http://bad_host!:1", "not a valid host name"),
        ("http://h h:1", "whitespace"),
        ("http://u:%ff@h:1", "percent-encoded UTF-8"),
    ],
)
def test_bad_urls_raise_one_line_value_errors(url, words):
    """Each bad URL raises a ValueError subclass with one line saying what is wrong."""
    with pytest.raises(UpstreamURLError) as info:
        parse_upstream(url)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["socks5://u:topsecret@h:1", "http://u:topsecret@h", "http://u:topsecret@h:1/x",
            "u:topsecret@h:1"]
)
def test_errors_never_show_the_password(url):
    """Error messages redact the password even when the URL is rejected."""
    with pytest.raises(UpstreamURLError) as info:
        parse_upstream(url)
    assert "topsecret" not in str(info.value)


def test_non_string_is_rejected():
    """A non-string upstream is a clear error, not an AttributeError."""
    with pytest.raises(UpstreamURLError, match="must be a string"):
        parse_upstream(None)  # type: ignore[arg-type]


@given(
    user=st.text(min_size=1, max_size=40),
    password=st.one_of(st.none(), st.text(max_size=40)),
    port=st.integers(1, 65535),
)
def test_any_credentials_round_trip(user, password, port):
    """Any user/password, percent-encoded into a URL, parses back exactly."""
    userinfo = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    up = parse_upstream(f"http://{userinfo}@proxy.example:{port}")
    assert (up.username, up.password, up.host, up.port) == (user, password, "proxy.example", port)
    if password:
        assert up.redacted().endswith(f":***@proxy.example:{port}")
