"""The kill switch: the nftables text it renders, and what it lets out of a namespace (root only)."""

from __future__ import annotations

import subprocess

import pytest
from test_leak_netns import (
    CLIENT4,
    MARK,
    PEER4,
    PEER6,
    UPSTREAM,
    Capture,
    inside,
    listen,
    ping,
    tcp_connect,
    tcp_refused,
    udp_send,
    veth_pair,
)

from atlantic.health.leaks import classify
from atlantic.system import killswitch as K

EXPECTED = """\
add table inet atlantic
delete table inet atlantic
table inet atlantic {
\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toifname "lo" accept
\t\toifname "atl0" accept
\t\tmeta mark 0x2026 ip daddr 203.0.113.10 tcp dport 8080 accept
\t\tip daddr { 192.168.1.0/24 } accept
\t\tudp sport 68 udp dport 67 accept
\t\tudp sport 546 udp dport 547 accept
\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t\ttcp dport 53 counter reject with tcp reset comment "atlantic: dns blocked"
\t\tudp dport 53 counter reject with icmpx type admin-prohibited comment "atlantic: dns blocked"
\t\tmeta l4proto tcp counter reject with tcp reset comment "atlantic: blocked"
\t\tcounter reject with icmpx type admin-prohibited comment "atlantic: blocked"
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\toifname "atl0" accept
\t\tiifname "atl0" accept
\t\tip daddr { 192.168.1.0/24 } accept
\t\ttcp dport 53 counter reject with tcp reset comment "atlantic: dns blocked"
\t\tudp dport 53 counter reject with icmpx type admin-prohibited comment "atlantic: dns blocked"
\t\tmeta l4proto tcp counter reject with tcp reset comment "atlantic: blocked"
\t\tcounter reject with icmpx type admin-prohibited comment "atlantic: blocked"
\t}
}
"""


def test_ruleset_text_for_a_proxy_upstream_with_lan_and_dhcp():
    """One atomic script: remove any old table, then output and forward chains that end in reject."""
    cfg = K.KillSwitchConfig(
        upstream=(K.Endpoint("203.0.113.10", 8080),), allow_lan=("192.168.1.0/24",), allow_dhcp=True
    )
    assert K.render_ruleset(cfg) == EXPECTED


def test_direct_mode_allows_marked_packets_anywhere_and_nothing_unmarked():
    """In direct mode the marked rule has no address or port; unmarked traffic still ends in reject."""
    text = K.render_ruleset(K.KillSwitchConfig(direct=True, fwmark=0x1))
    assert "\t\tmeta mark 0x1 accept\n" in text
    assert "daddr" not in text


def test_ipv6_upstream_lan_split_and_internal_interfaces():
    """IPv6 upstreams and prefixes use ip6 matches; internal bridges are allowed by name in both chains."""
    text = K.render_ruleset(K.KillSwitchConfig(
        upstream=(K.Endpoint("2001:db8::1", 443),), allow_lan=("10.0.0.0/8", "fd00::/8"),
        allow_interfaces=("docker0", "br-*"), forward=True,
    ))
    assert "meta mark 0x2026 ip6 daddr 2001:db8::1 tcp dport 443 accept" in text
    assert "ip daddr { 10.0.0.0/8 } accept" in text and "ip6 daddr { fd00::/8 } accept" in text
    assert text.count('oifname "br-*" accept') == 2


def test_without_forward_there_is_only_the_output_chain():
    """forward=False leaves routed traffic alone (a plain laptop)."""
    assert "chain forward" not in K.render_ruleset(K.KillSwitchConfig(forward=False))


def test_removal_is_idempotent_text():
    """Removal adds then deletes the table, so it succeeds whether or not the table exists."""
    assert K.render_removal() == "add table inet atlantic\ndelete table inet atlantic\n"


def test_bad_config_is_refused_with_a_clear_reason():
    """Bad prefixes, addresses, ports and interface names are ValueErrors before nft sees them."""
    with pytest.raises(ValueError):
        K.KillSwitchConfig(allow_lan=("192.168.1.0/33",))
    with pytest.raises(ValueError):
        K.KillSwitchConfig(upstream=(K.Endpoint("proxy.example", 80),))
    with pytest.raises(ValueError, match="port"):
        K.KillSwitchConfig(upstream=(K.Endpoint("10.0.0.1", 0),))
    with pytest.raises(ValueError, match="interface"):
        K.KillSwitchConfig(tun='atl0" accept')


def test_counters_parse_the_blocked_rules_only():
    """Blocked totals add up the counters of the rules carrying the blocked comment."""
    listing = {"nftables": [
        {"rule": {"comment": K.BLOCKED_COMMENT, "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}]}},
        {"rule": {"comment": K.BLOCKED_COMMENT, "expr": [{"counter": {"packets": 1, "bytes": 60}}, {"reject": None}]}},
        {"rule": {"expr": [{"counter": {"packets": 99, "bytes": 99}}]}},
    ]}
    assert K.parse_counters(listing) == {"blocked_packets": 4, "blocked_bytes": 240, "blocked_dns_packets": 0}


@pytest.mark.lab_local  # root: namespaces and nftables
def test_kill_switch_blocks_unmarked_passes_marked_and_loopback_then_removes():
    """Unmarked TCP/UDP/ICMP never reach the wire; marked TCP to the upstream and loopback pass; remove() opens all."""
    with veth_pair() as pair:
        with inside(pair.peer):
            upstream = listen(UPSTREAM)
            other = listen((PEER4, 8080))
        try:
            with inside(pair.client):
                cfg = K.KillSwitchConfig(fwmark=MARK, upstream=(K.Endpoint(*UPSTREAM),))
                cap = Capture(pair)
                try:
                    K.apply(cfg)
                    K.apply(cfg)  # twice is safe: still one table
                    assert K.is_active()
                    assert subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                          check=True).stdout.count("atlantic") == 1
                    local = listen(("127.0.0.1", 0))
                    tcp_connect(local.getsockname()).close()  # loopback passes
                    local.close()
                    tcp_refused(UPSTREAM)  # unmarked to the upstream itself
                    tcp_refused((PEER6, 3128))
                    udp_send((PEER4, 9999)).close()
                    udp_send((PEER6, 9999)).close()
                    ping(PEER4)
                    with pytest.raises(OSError):  # marked, but not to the upstream's port
                        tcp_connect((PEER4, 8080), mark=MARK, timeout=2.0)
                    assert classify(cap.frames()).descriptions() == ()
                    assert K.counters()["blocked_packets"] >= 5
                    tcp_connect(UPSTREAM, mark=MARK).close()
                    assert f"IPv4 proto 6 {CLIENT4} -> {PEER4}" in classify(cap.frames()).descriptions()
                finally:
                    K.remove()
                K.remove()  # twice is safe
                assert not K.is_active() and K.counters() is None
                tcp_connect(UPSTREAM).close()
                tcp_connect((PEER4, 8080)).close()
                udp_send((PEER4, 9999)).close()
                ping(PEER4)
                seen = classify(cap.frames()).descriptions()
                assert f"IPv4 proto 17 {CLIENT4} -> {PEER4}" in seen
                assert f"IPv4 proto 1 {CLIENT4} -> {PEER4}" in seen
                cap.close()
        finally:
            upstream.close()
            other.close()


@pytest.mark.lab_local
def test_direct_mode_and_lan_allowance_in_a_namespace():
    """Direct mode lets marked TCP reach any port; an allowed LAN prefix lets unmarked traffic through."""
    with veth_pair() as pair:
        with inside(pair.peer):
            other = listen((PEER4, 8080))
        try:
            with inside(pair.client):
                try:
                    K.apply(K.KillSwitchConfig(fwmark=MARK, direct=True))
                    tcp_connect((PEER4, 8080), mark=MARK).close()
                    tcp_refused((PEER4, 8080))
                    K.apply(K.KillSwitchConfig(fwmark=MARK, allow_lan=("10.200.0.0/24",)))
                    tcp_connect((PEER4, 8080)).close()
                    tcp_refused((PEER6, 8080))
                finally:
                    K.remove()
        finally:
            other.close()


def test_counters_count_dns_apart_and_within_the_total():
    """DNS that tried to leave is counted on its own rules and in the blocked total."""
    listing = {"nftables": [
        {"rule": {"comment": "atlantic: dns blocked", "expr": [{"counter": {"packets": 3, "bytes": 180}}]}},
        {"rule": {"comment": "atlantic: blocked", "expr": [{"counter": {"packets": 2, "bytes": 120}}]}},
        {"rule": {"comment": "something else", "expr": [{"counter": {"packets": 9, "bytes": 900}}]}},
    ]}
    assert K.parse_counters(listing) == {"blocked_packets": 5, "blocked_bytes": 300, "blocked_dns_packets": 3}
