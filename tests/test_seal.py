"""What the kill switch lets out, as the config describes it (client/seal.py): the same for
the daemon and the early-boot `atlantic killswitch apply`; marked DNS to the network's
resolvers (system/killswitch.py, as text); the addresses remembered across boots; and the
re-pin decision after a network change (client/repin.py)."""

from __future__ import annotations

import json

from atlantic.client import seal
from atlantic.client.config import CaptureConfig, Config, DaemonConfig
from atlantic.client.killswitch_cli import boot_config
from atlantic.client.repin import moved
from atlantic.pool.upstream import parse_upstream
from atlantic.system import killswitch as K

EXPECTED_RESOLVERS = """\
add table inet atlantic
delete table inet atlantic
table inet atlantic {
\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toifname "lo" accept
\t\toifname "atl0" accept
\t\tmeta mark 0x2026 ip daddr 203.0.113.10 tcp dport 8080 accept
\t\tmeta mark 0x2026 ip daddr { 192.168.1.1, 192.168.1.2 } udp dport 53 accept
\t\tmeta mark 0x2026 ip daddr { 192.168.1.1, 192.168.1.2 } tcp dport 53 accept
\t\tmeta mark 0x2026 ip6 daddr { 2001:db8::53 } udp dport 53 accept
\t\tmeta mark 0x2026 ip6 daddr { 2001:db8::53 } tcp dport 53 accept
\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t\ttcp dport 53 counter reject with tcp reset comment "atlantic: dns blocked"
\t\tudp dport 53 counter reject with icmpx type admin-prohibited comment "atlantic: dns blocked"
\t\tmeta l4proto tcp counter reject with tcp reset comment "atlantic: blocked"
\t\tcounter reject with icmpx type admin-prohibited comment "atlantic: blocked"
\t}
}
"""


def test_marked_dns_may_reach_exactly_the_resolvers():
    """Marked UDP and TCP 53 to the listed resolvers (per family, duplicates dropped), before
    the DNS reject; unmarked DNS and DNS elsewhere are still refused."""
    cfg = K.KillSwitchConfig(upstream=(K.Endpoint("203.0.113.10", 8080),), forward=False,
                             resolvers=("192.168.1.1", "2001:db8::53", "192.168.1.2", "192.168.1.1"))
    assert K.render_ruleset(cfg) == EXPECTED_RESOLVERS


def test_no_resolver_rule_in_direct_mode_or_without_resolvers():
    """Direct mode lets marked packets anywhere already; no resolvers, no rule."""
    assert "dport 53 accept" not in K.render_ruleset(K.KillSwitchConfig(direct=True, resolvers=("10.0.0.1",)))
    assert "dport 53 accept" not in K.render_ruleset(K.KillSwitchConfig())


def _cfg(*urls: str, tmp_path=None, **capture) -> Config:
    daemon = DaemonConfig(state_dir=tmp_path) if tmp_path is not None else DaemonConfig()
    return Config(capture=CaptureConfig(**capture), daemon=daemon).with_upstreams(list(urls))


def test_daemon_and_boot_render_the_same_kill_switch(tmp_path):
    """Literal and remembered proxy addresses become endpoints; LAN, DHCP and internal
    interfaces as configured; a name never resolved gets none (and is named)."""
    cfg = _cfg("http://u@203.0.113.10:8080", "https://u@proxy.example.net:443", "http://u@new.example.net:3128",
               tmp_path=tmp_path, lan=("192.168.1.0/24",), allow_dhcp=True, allow_interfaces=("docker0",))
    seal.save_pins(seal.pins_file(cfg), {"proxy.example.net": "198.51.100.4", "203.0.113.10": "203.0.113.10"}, 1000.0)
    ks, unknown = boot_config(cfg)
    assert ks.upstream == (K.Endpoint("203.0.113.10", 8080), K.Endpoint("198.51.100.4", 443))
    assert unknown == ["new.example.net"]
    assert (ks.allow_lan, ks.allow_dhcp, ks.allow_interfaces, ks.direct, ks.resolvers) == (
        ("192.168.1.0/24",), True, ("docker0",), False, ())
    ups = [parse_upstream(u.url) for u in cfg.upstreams]
    daemon = seal.killswitch_config(cfg, ups, {"203.0.113.10": "203.0.113.10", "proxy.example.net": "198.51.100.4",
                                               "new.example.net": "198.51.100.9"}, ("192.168.1.1",))
    assert daemon.upstream[:2] == ks.upstream and daemon.resolvers == ("192.168.1.1",)
    direct, unknown = boot_config(_cfg("direct", tmp_path=tmp_path))
    assert direct.direct and direct.upstream == () and unknown == []


def test_pins_file_lives_across_reboots_for_the_system_daemon(tmp_path):
    """/var/lib/atlantic for the default /run/atlantic; beside a custom state_dir otherwise."""
    assert str(seal.pins_file(_cfg("direct"))) == "/var/lib/atlantic/upstream-addresses.json"
    assert seal.pins_file(_cfg("direct", tmp_path=tmp_path)) == tmp_path / "upstream-addresses.json"


def test_pins_are_merged_newest_first_private_and_unreadable_means_none(tmp_path):
    """Saving merges with other configs' rows (the newest MAX_PINS kept), 0600, literals left
    out; a missing or broken file reads as no pins."""
    path = tmp_path / "d" / "pins.json"
    assert seal.load_pins(path) == {}
    seal.save_pins(path, {"a.test": "192.0.2.1"}, 10.0)
    seal.save_pins(path, {"b.test": "2001:db8::2", "192.0.2.9": "192.0.2.9"}, 20.0)
    assert seal.load_pins(path) == {"a.test": "192.0.2.1", "b.test": "2001:db8::2"}
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    rows = {f"h{i}.test": {"address": "192.0.2.1", "at": i} for i in range(seal.MAX_PINS + 5)}
    merged = seal.merge_pins({"addresses": rows}, {"new.test": "192.0.2.2"}, 10_000.0)
    assert len(merged["addresses"]) == seal.MAX_PINS and "new.test" in merged["addresses"]
    assert "h0.test" not in merged["addresses"]
    path.write_text("{broken")
    assert seal.load_pins(path) == {}
    path.write_text(json.dumps({"addresses": {"x.test": {"address": "not-an-ip"}}}))
    assert seal.load_pins(path) == {}


def test_a_pinned_address_still_answered_stays():
    """Only a host whose pinned address is no longer among its answers moves (to the first answer)."""
    pinned = {"a.test": "192.0.2.1", "b.test": "192.0.2.5", "c.test": "192.0.2.9"}
    answers = {"a.test": ["192.0.2.2", "192.0.2.1"], "b.test": ["198.51.100.5", "198.51.100.6"], "c.test": []}
    assert moved(pinned, answers) == {"b.test": "198.51.100.5"}
