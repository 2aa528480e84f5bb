"""The kernel's TCP redirect (system/redirect.py) and the original destination the listener
reads back (interceptor/origdst.py): the rendered nft text, the sockaddr parser, and in
throwaway namespaces (root) real redirected connections over IPv4 and IPv6."""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from atlantic.interceptor.origdst import original_destination, parse_sockaddr
from atlantic.lab.throwaway import inside
from atlantic.system import redirect
from atlantic.system.redirect import RedirectConfig, render_redirect, render_removal

OTHER_PORT = 8081


def test_render_redirects_tcp_routed_out_of_the_tun_and_skips_marked_packets():
    """One nat chain on the output hook: marked packets return first, then TCP whose route
    leaves through the TUN goes to the listener's port, per family."""
    text = render_redirect(RedirectConfig(tun="atl0", fwmark=0x2026, port=40123))
    assert text == (
        "add table inet atlantic_redirect\n"
        "delete table inet atlantic_redirect\n"
        "table inet atlantic_redirect {\n"
        "\tchain output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tmeta mark 0x2026 return\n"
        '\t\toifname "atl0" meta nfproto ipv4 meta l4proto tcp counter redirect to :40123 comment "atlantic: tcp to listener"\n'
        '\t\toifname "atl0" meta nfproto ipv6 meta l4proto tcp counter redirect to :40123 comment "atlantic: tcp to listener"\n'
        "\t}\n"
        "}\n"
    )


def test_render_leaves_a_family_without_listener_to_the_tun():
    """ipv6=False: only IPv4 is redirected (IPv6 TCP stays on the packet NAT)."""
    text = render_redirect(RedirectConfig(port=1, ipv6=False))
    assert "nfproto ipv4" in text and "nfproto ipv6" not in text


@pytest.mark.parametrize("kw", [{"port": 0}, {"port": 70000}, {"port": 1, "tun": 'a"b'}, {"port": 1, "tun": ""}])
def test_config_refuses_bad_values(kw):
    """A port outside 1..65535 or an interface name nft cannot quote is refused at once."""
    with pytest.raises(ValueError):
        RedirectConfig(**kw)


def test_removal_is_safe_when_absent():
    """Removal adds then deletes the table: one transaction that works with or without it."""
    assert render_removal() == "add table inet atlantic_redirect\ndelete table inet atlantic_redirect\n"


def test_parse_sockaddr_in_and_in6():
    """Raw sockaddr_in / sockaddr_in6 as getsockopt returns them become (host, port)."""
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 443) + socket.inet_aton("198.18.128.7") + bytes(8)
    assert parse_sockaddr(v4) == ("198.18.128.7", 443)
    v6 = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 80, 0)
          + socket.inet_pton(socket.AF_INET6, "fd00:a71a:1::5") + bytes(4))
    assert parse_sockaddr(v6) == ("fd00:a71a:1::5", 80)


@pytest.mark.parametrize("raw", [b"", b"\x02\x00", struct.pack("=H", socket.AF_UNIX) + bytes(14),
                                 struct.pack("=H", socket.AF_INET6) + bytes(10)])
def test_parse_sockaddr_refuses_what_is_not_one(raw):
    """Short buffers and other families are a ValueError, never a wrong address."""
    with pytest.raises(ValueError):
        parse_sockaddr(raw)


def _accept_one(listener: socket.socket) -> socket.socket:
    conn, _ = listener.accept()
    return conn


@pytest.mark.lab_local
def test_redirected_connections_reach_the_loopback_listener_with_their_destination():
    """With the table applied, an unmarked connect to the peer (IPv4 and IPv6) lands on the
    loopback listener, which reads the peer's address as the original destination; a
    marked connect still reaches the real peer; a connect made straight to the listener
    has no original destination; removal restores the plain path."""
    from test_leak_netns import MARK, PEER4, PEER6, listen, tcp_connect, veth_pair

    with veth_pair() as pair:
        with inside(pair.peer):
            real = [listen((PEER4, OTHER_PORT)), listen((PEER6, OTHER_PORT))]
        with inside(pair.client):
            v4 = listen(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6 = listen(("::1", port))
        try:
            with inside(pair.client):
                redirect.apply(RedirectConfig(tun=pair.client_if, fwmark=MARK, port=port))
                redirect.apply(RedirectConfig(tun=pair.client_if, fwmark=MARK, port=port))  # twice is once
                assert redirect.is_active()
                tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
                assert tables.count("atlantic_redirect") == 1
                for peer, listener in ((PEER4, v4), (PEER6, v6)):
                    app = tcp_connect((peer, OTHER_PORT))
                    conn = _accept_one(listener)
                    assert original_destination(conn, listener.getsockname()[:2]) == (peer, OTHER_PORT)
                    app.sendall(b"hello")
                    assert conn.recv(5) == b"hello"
                    app.close(), conn.close()
                tcp_connect((PEER4, OTHER_PORT), mark=MARK).close()  # the daemon's own: not redirected
                assert _accept_one(real[0]) is not None
                straight = tcp_connect(("127.0.0.1", port))
                conn = _accept_one(v4)
                assert original_destination(conn, ("127.0.0.1", port)) is None  # not redirected: refused
                straight.close(), conn.close()
                redirect.remove()
                redirect.remove()  # twice is fine
                assert not redirect.is_active()
                tcp_connect((PEER6, OTHER_PORT)).close()
                assert _accept_one(real[1]) is not None
        finally:
            for s in (*real, v4, v6):
                s.close()
