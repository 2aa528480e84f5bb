"""Looking the proxies' names up again after a major network change, and re-pinning them.

At start each proxy's name is resolved once and its address pinned: the pools connect
there, the kill switch lets marked TCP reach only there. On a new network the name may
point elsewhere (a provider's geo-DNS, a gateway that moved). After each major change,
:class:`Repin` reads the network's resolvers (``marked_dns.read_resolvers``), lets marked
DNS reach them (the kill switch is re-applied atomically when they changed), asks each
name over the marked path, and when a pinned address is no longer among the answers:
the kill switch lets the new one through first, then every address map (each pool's,
the health monitor's) points there, the pools drop their idle connections, and the new
address is remembered for the early-boot kill switch. One info line per change.

An address still among the answers stays pinned (round-robin names do not churn the
pins, and flows in flight keep their path). A failed lookup changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass

from atlantic.system import killswitch
from atlantic.system.marked_dns import MarkedDnsError, read_resolvers, resolve_marked

log = logging.getLogger("atlantic")


def moved(pinned: dict[str, str], answers: dict[str, list[str]]) -> dict[str, str]:
    """host -> new address for each pinned address that is not among its host's answers (pure)."""
    return {host: found[0] for host, found in answers.items()
            if found and host in pinned and pinned[host] not in found}


@dataclass
class Repin:
    """The names to look up again and everything that holds their addresses.

    ``pinned`` is the current map (host -> address) and is updated in place, as is each of
    ``maps`` (the pools' and the monitor's copies). ``render(pinned, resolvers)`` gives the
    kill switch for them (None: no kill switch); ``seal`` applies one (atomically, off the
    loop); ``remember`` saves the pins (blocking: run in a thread); ``drain`` drops the
    pools' idle connections.
    """

    hosts: tuple[str, ...]
    pinned: dict[str, str]
    maps: list[MutableMapping[str, str]]
    mark: int
    render: Callable[[dict[str, str], tuple[str, ...]], killswitch.KillSwitchConfig] | None
    seal: Callable[[killswitch.KillSwitchConfig], Awaitable[None]]
    remember: Callable[[dict[str, str]], None]
    drain: Callable[[], None]
    resolvers: tuple[str, ...] = ()
    read: Callable[[], tuple[str, ...]] = read_resolvers
    lookup: Callable[..., Awaitable[list[str]]] = resolve_marked
    changes: int = 0
    failures: int = 0
    last: str | None = None

    async def run(self) -> None:
        """One round: resolvers, lookups, and the re-pin when an address moved."""
        resolvers = await asyncio.to_thread(self.read)
        if resolvers != self.resolvers:
            self.resolvers = resolvers
            if self.render is not None:  # the queries must be let out before they are sent
                await self.seal(self.render(dict(self.pinned), resolvers))
        answers: dict[str, list[str]] = {}
        for host in self.hosts:
            try:
                answers[host] = await self.lookup(host, resolvers, mark=self.mark)
            except MarkedDnsError as exc:
                self.failures += 1
                self.last = str(exc)
                log.info("%s; %s stays at %s", exc, host, self.pinned.get(host))
        new = moved(self.pinned, answers)
        if not new:
            return
        old = {h: self.pinned[h] for h in new}
        self.pinned.update(new)
        if self.render is not None:
            await self.seal(self.render(dict(self.pinned), resolvers))
        for m in self.maps:
            for host, addr in new.items():
                if host in m:
                    m[host] = addr
        self.drain()
        self.changes += 1
        self.last = "; ".join(f"{h} moved from {old[h]} to {a}" for h, a in new.items())
        log.info("proxy address changed after the network change: %s (asked %s over the marked path)",
                 self.last, ", ".join(resolvers))
        await asyncio.to_thread(self.remember, dict(self.pinned))

    def status(self) -> dict:
        """The ``repin`` part of the network status."""
        return {"resolvers": list(self.resolvers), "pinned": dict(self.pinned), "changes": self.changes,
                "failures": self.failures, "last": self.last}


def build(cfg, upstreams, pinned: dict[str, str], resolvers: tuple[str, ...], outbound, guard) -> Repin | None:
    """The daemon's Repin (None when every proxy is named by address, or direct): every
    pool's address map and the monitor's, the guard's kill switch, the pins file."""
    import time

    from atlantic.client import seal

    literal = seal.literal_addresses(upstreams)
    hosts = tuple(dict.fromkeys(u.host for u in upstreams if not u.is_direct and u.host not in literal))
    if not hosts:
        return None
    maps = [p.addresses for p in outbound.pools]
    if outbound.monitor is not None:
        maps.append(outbound.monitor.addresses)
    path = seal.pins_file(cfg)
    render = (lambda p, r: seal.killswitch_config(cfg, upstreams, p, r)) if cfg.capture.kill_switch else None
    return Repin(hosts=hosts, pinned=dict(pinned), maps=maps, mark=cfg.routing.fwmark, render=render,
                 seal=guard.seal, remember=lambda p: seal.save_pins(path, p, time.time()),
                 drain=outbound.drain, resolvers=resolvers)
