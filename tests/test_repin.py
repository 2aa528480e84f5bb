"""The guard starts a re-resolve on a major change only (client/netguard.py + client/repin.py),
with the lookup and the resolvers played here and no kill switch: nothing touches the host."""

from __future__ import annotations

import asyncio

from atlantic.client.netguard import NetGuard
from atlantic.client.repin import Repin
from atlantic.system import routing
from atlantic.system.marked_dns import MarkedDnsError
from atlantic.system.netchange import Change, Kind


def test_a_major_change_looks_the_name_up_again_and_moves_every_map():
    """Minor: no lookup. Major: drain, lookup with the mark, maps moved, status says so;
    a failed lookup leaves the pin and is counted."""
    asked, drained, maps = [], [], [{"p.test": "192.0.2.1"}, {"p.test": "192.0.2.1"}]
    answers = {"p.test": ["198.51.100.7"]}

    async def lookup(host, resolvers, *, mark):
        asked.append((host, resolvers, mark))
        if host not in answers:
            raise MarkedDnsError(f"cannot look up {host} over the marked path: NXDOMAIN")
        return answers[host]

    async def scenario() -> dict:
        plan = routing.plan_routing("atl0", 2026, 0x2026, 32000, ipv6="captured", capture_dns=True)
        guard = NetGuard(plan=plan, killswitch_config=None, drain=lambda: drained.append("guard"),
                         recheck_leaks=lambda: None)

        async def never(_cfg):
            raise AssertionError("no kill switch here")

        guard.repin = Repin(hosts=("p.test",), pinned={"p.test": "192.0.2.1"}, maps=maps, mark=0x2026, render=None,
                            seal=never, remember=lambda p: None, drain=lambda: drained.append("repin"),
                            read=lambda: ("192.168.1.1",), lookup=lookup)
        guard.on_change(Change(Kind.MINOR, ("new address fe80::1/64 on wlan0",)))
        await asyncio.sleep(0.05)
        assert asked == []
        guard.on_change(Change(Kind.MAJOR, ("new default route via 10.0.0.1 dev wlan0",)))
        await guard._repinning
        first = guard.status()["proxy_addresses"]
        answers.clear()
        guard.on_change(Change(Kind.MAJOR, ("lost address 10.0.0.2/24 on wlan0",)))
        await guard._repinning
        return first, guard.status()["proxy_addresses"]

    first, second = asyncio.run(scenario())
    assert asked == [("p.test", ("192.168.1.1",), 0x2026)] * 2
    assert maps == [{"p.test": "198.51.100.7"}] * 2 and drained == ["guard", "repin", "guard"]
    assert first == {"resolvers": ["192.168.1.1"], "pinned": {"p.test": "198.51.100.7"}, "changes": 1,
                     "failures": 0, "last": "p.test moved from 192.0.2.1 to 198.51.100.7"}
    assert second["failures"] == 1 and second["pinned"] == {"p.test": "198.51.100.7"}
