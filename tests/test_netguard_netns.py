"""The routing guard in a throwaway namespace (root): what someone else removes of our ip
rules, routes and kill-switch table (``ip rule del``, ``nft flush ruleset``) is put back
with one line each; a major network change drains the pools and reruns the leak probe."""

from __future__ import annotations

import logging
import subprocess

import pytest

from atlantic.client.netguard import NetGuard
from atlantic.lab.throwaway import thread_in_netns
from atlantic.system import killswitch, redirect, routing
from atlantic.system.netchange import Change, Kind

pytestmark = pytest.mark.lab_local  # root: namespaces, netlink and nftables

MARK, TABLE, PRIO = 0x2026, 2026, 32000


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=10, capture_output=True)


def test_what_others_remove_is_put_back_and_major_changes_drain(caplog):
    """Nothing missing: no line. Rules deleted and the nft ruleset flushed: the kill switch,
    the TCP redirect and the rules are put back, and the next check finds nothing missing. A major change drains, a minor one only
    rechecks leaks."""
    calls = []
    with thread_in_netns("atlt-guard-"):
        run("ip", "link", "add", "atl0", "type", "veth", "peer", "name", "atl0p")  # no dummy module here
        run("ip", "link", "set", "atl0", "up")
        plan = routing.plan_routing("atl0", TABLE, MARK, PRIO, ipv6="captured", capture_dns=True)
        record = routing.prepare(plan)
        ks = killswitch.KillSwitchConfig(tun="atl0", fwmark=MARK, upstream=(killswitch.Endpoint("192.0.2.7", 3128),))
        try:
            routing.apply(plan)
            killswitch.apply(ks)
            tcp = redirect.RedirectConfig(tun="atl0", fwmark=MARK, port=40123)
            redirect.apply(tcp)
            guard = NetGuard(plan=plan, killswitch_config=ks, redirect_config=tcp, drain=lambda: calls.append("drain"),
                             recheck_leaks=lambda: calls.append("recheck"))
            assert guard.repair() == [] and routing.missing(plan) == []

            run("ip", "rule", "del", "priority", str(PRIO))
            run("ip", "-6", "route", "flush", "table", str(TABLE))
            run("nft", "flush", "ruleset")
            gone = routing.missing(plan)
            assert any(f"ip rule {PRIO}" in g for g in gone) and any("default route" in g for g in gone)
            lines = guard.repair()
            assert len(lines) == 3, lines
            assert "kill switch table was removed" in lines[0] and "TCP redirect table was removed" in lines[1]
            assert f"ip rule {PRIO}" in lines[2]
            assert killswitch.is_active() and redirect.is_active()
            assert routing.missing(plan) == [] and guard.repair() == []
            assert guard.status()["repairs"] == 3

            run("ip", "addr", "add", "192.168.77.1/24", "dev", "atl0p")
            run("ip", "link", "set", "atl0p", "up")
            run("ip", "route", "add", "10.9.0.0/16", "via", "192.168.77.2")
            with caplog.at_level(logging.INFO, logger="atlantic"):
                assert guard.repair() == []  # not a repair: an information line
            said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("blocked while up")]
            assert len(said) == 1 and "capture.lan" in said[0]
            assert sorted(guard.status()["blocked_routes"]) == ["10.9.0.0/16 via 192.168.77.2 dev atl0p", "192.168.77.0/24 dev atl0p"]
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="atlantic"):
                guard.repair()
            assert not [r for r in caplog.records if "blocked while up" in r.getMessage()]  # once per change

            guard.on_change(Change(Kind.MINOR, ("new address 10.0.0.2/24 on eth1",)))
            guard.on_change(Change(Kind.MAJOR, ("new default route via 10.0.0.1 dev eth1",)))
            assert calls == ["recheck", "drain", "recheck"]
            assert guard.status()["last_change"].startswith("major network change: new default route")
        finally:
            redirect.remove()
            killswitch.remove()
            routing.restore(record)
