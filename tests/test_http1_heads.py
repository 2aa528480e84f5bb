"""The pure heads of the request relay: hop-by-hop removal, origin choice, error replies."""

from __future__ import annotations

import pytest

from atlantic.pool.errors import (
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamTargetError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from atlantic.forwarder.http1_heads import (
    BadRequest,
    end_to_end,
    error_reply,
    is_tunnel_request,
    request_head,
    response_headers,
    split_host,
)
from atlantic.pool.api import Endpoint, ResponseHead

DST = ("10.9.8.7", 8080)


def test_hop_by_hop_and_connection_named_headers_removed():
    """Connection, the fields it names, and every hop-by-hop field are dropped; order kept."""
    headers = [
        ("Host", "a.example"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Authenticate", "Basic"),
        ("Accept", "*/*"),
        ("Cookie", "a=1"),
    ]
    assert end_to_end(headers) == (("Host", "a.example"), ("Accept", "*/*"), ("Cookie", "a=1"))


def test_origin_form_uses_host_header_name_and_destination_port():
    """Origin-form: host from the Host header (lowercased, port dropped), port from the flow."""
    head = request_head("GET", "/p?q=1", [("Host", "WWW.Example.com:8080"), ("Expect", "100-continue")], DST, 0)
    assert head.endpoint == Endpoint("http", "www.example.com", 8080)
    assert head.target == "/p?q=1"
    assert head.headers == (("Host", "WWW.Example.com:8080"),)  # Expect answered by us, not forwarded


def test_no_host_header_uses_destination_and_adds_host():
    """HTTP/1.0 without Host: the destination address is the origin and Host is added."""
    head = request_head("GET", "/", [("Accept", "*/*")], ("10.0.0.1", 80), 0)
    assert head.endpoint == Endpoint("http", "10.0.0.1", 80)
    assert head.headers == (("Host", "10.0.0.1"), ("Accept", "*/*"))


def test_absolute_form_becomes_origin_form():
    """Absolute-form: the URL names the origin, Host is rewritten, the target is origin-form."""
    head = request_head("POST", "http://Other.example:81/a/b?c=d", [("Host", "stale"), ("Content-Length", "3")], DST, 3)
    assert head.endpoint == Endpoint("http", "other.example", 81)
    assert head.target == "/a/b?c=d"
    assert head.headers == (("Host", "other.example:81"), ("Content-Length", "3"))
    assert head.body_length == 3


def test_absolute_form_without_path():
    """``http://host`` alone means ``/`` on port 80."""
    head = request_head("GET", "http://h.example", [], DST, 0)
    assert (head.endpoint.port, head.target) == (80, "/")


def test_https_absolute_form_is_a_bad_request():
    """``GET https://...`` is refused with a reason (HTTPS rides tunnels)."""
    with pytest.raises(BadRequest, match="CONNECT"):
        request_head("GET", "https://a.example/", [], DST, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a.example", ("a.example", None)), ("A.example.:81", ("a.example", 81)), ("[::1]:8080", ("::1", 8080)), ("[2001:db8::1]", ("2001:db8::1", None))],
)
def test_split_host(value, expected):
    """Host values split into a normalised name and an optional port."""
    assert split_host(value) == expected


@pytest.mark.parametrize("value", ["a:99999", "a:x", "[::1", "a b", "[zz]:1", "", "user@h"])
def test_split_host_rejects(value):
    """Malformed Host values are the application's fault: BadRequest."""
    with pytest.raises(BadRequest):
        split_host(value)


def test_tunnel_requests():
    """CONNECT and any Upgrade request become tunnels; ordinary requests do not."""
    assert is_tunnel_request("CONNECT", [])
    assert is_tunnel_request("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade")])
    assert not is_tunnel_request("GET", [("Connection", "keep-alive")])


def test_response_headers_set_length_from_body_length():
    """Content-Length comes from body_length; unknown length leaves framing to h11."""
    head = ResponseHead(200, "OK", (("Content-Length", "999"), ("Connection", "close"), ("X-A", "1")), 12, "1.1")
    assert response_headers(head, "GET") == [("X-A", "1"), ("Content-Length", "12")]
    unknown = ResponseHead(200, "OK", (("X-A", "1"), ("Transfer-Encoding", "chunked")), None, "1.1")
    assert response_headers(unknown, "GET") == [("X-A", "1")]


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_bodyless_responses_keep_upstream_content_length(method, status):
    """HEAD, 204 and 304 keep the upstream's Content-Length (it describes the GET)."""
    head = ResponseHead(status, "", (("Content-Length", "5000"),), 0, "1.1")
    assert response_headers(head, method) == [("Content-Length", "5000")]


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (UpstreamTimeoutError("proxy p timed out"), 504, "timed out"),
        (UpstreamUnreachableError("proxy p: connection refused"), 502, "unreachable"),
        (UpstreamAuthError("proxy p rejected the credentials (407)", 407), 502, "rejected Atlantic's credentials"),
        (UpstreamTargetError("proxy p could not reach x (504 Gateway Timeout)", 504), 504, "could not reach"),
        (RemoteProtocolError("malformed status line"), 502, "broken response"),
        (ConnectionResetError(104, "Connection reset by peer"), 502, "Connection reset"),
        (KeyError("bug"), 502, "internal error"),
    ],
)
def test_error_replies_are_one_line_with_reason(exc, status, words):
    """Each upstream failure maps to 502/504 with a one-line plain-text reason."""
    reply = error_reply(exc)
    assert reply.status == status
    assert words in reply.body.decode()
    assert reply.body.endswith(b"\n") and reply.body.count(b"\n") == 1
    assert dict(reply.headers())["Content-Length"] == str(len(reply.body))


def test_multiline_exception_text_is_folded():
    """An exception message with newlines still yields a one-line body."""
    assert error_reply(RemoteProtocolError("a\nb\r\nc")).body.count(b"\n") == 1
