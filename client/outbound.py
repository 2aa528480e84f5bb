"""The daemon's outbound side, built from the config: one pool per upstream, the set that
chooses between them, the health monitor and the leak detector.

With one proxy or several, flows go through an :class:`~atlantic.pool.upstreams.UpstreamSet`
whose choice the :class:`~atlantic.health.monitor.HealthMonitor` publishes; a direct
upstream has nothing to fail over to or probe, so its pool serves flows by itself, as
does a single proxy with ``[health] enabled = false``. The
leak detector runs either way (the kill switch guards direct mode too). Both background
tasks are supervised: a bug in one is one log line a minute and a restart, never the end
of the daemon, and never a flow's problem.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from atlantic.client.config import Config, UpstreamConfig
from atlantic.health.leakdetect import LeakDetector, ProbeTarget
from atlantic.health.monitor import HealthMonitor, MonitorSettings
from atlantic.health.probe import probe_tls_context
from atlantic.health.state import HealthConfig
from atlantic.pool.api import Pool
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.proxyurl import ProxyConfig
from atlantic.pool.upstream import Upstream, UpstreamKind
from atlantic.pool.upstreams import UpstreamSet
from atlantic.system import killswitch

log = logging.getLogger("atlantic")

RESTART_DELAY_S = 5.0  # a background task that failed starts again after this
LOG_EVERY_S = 60.0


def settings_for(cfg: Config, i: int) -> UpstreamConfig:
    """The i-th upstream's settings (credentials file, template, country, CA); a URL given
    beyond the configured ones gets the defaults."""
    ups = cfg.upstreams
    return ups[i] if i < len(ups) else UpstreamConfig(key=f"upstream[{i + 1}]")


def make_pool(cfg: Config, i: int, url: str, pinned: dict[str, str]) -> UpstreamPool:
    """Upstream ``i``'s pool, as the config describes it."""
    up = settings_for(cfg, i)
    proxy = ProxyConfig(url, up.username_template, {"country": up.country} if up.country else {},
                        up.session_minutes)
    return UpstreamPool(
        proxy, mark=cfg.routing.fwmark, ca_file=str(up.ca_file) if up.ca_file else None,
        connect_timeout=up.connect_timeout_s, idle_timeout=cfg.pool.idle_timeout_s,
        max_per_key=cfg.pool.max_per_endpoint, max_total=cfg.pool.max_connections,
        warm_tunnels=cfg.pool.warm_tunnels, ping_interval=cfg.pool.ping_interval_s,
        plain_http=cfg.pool.plain_http,
        addresses=pinned, origin_ca_file=str(cfg.tls.origin_ca_file) if cfg.tls.origin_ca_file else None,
    )


def local_addresses() -> frozenset[str]:
    """Every address of this machine's interfaces (the exit must be none of them)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return frozenset(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS"))


@dataclass
class Outbound:
    """What the dispatcher sends flows to (``pool``), and the tasks watching it."""

    pool: Pool
    pools: list[UpstreamPool]
    monitor: HealthMonitor | None
    leaks: LeakDetector
    tasks: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> None:
        """Start the pools' background work, then the monitor and the leak detector."""
        await self.pool.start()
        if self.monitor is not None:
            self.tasks.append(asyncio.create_task(supervised("health monitor", self.monitor.run)))
        self.tasks.append(asyncio.create_task(supervised("leak detector", self.leaks.run)))

    def apply_health(self, cfg: Config) -> None:
        """New ``[health]`` settings (a reload): the monitor uses them from its next step."""
        if self.monitor is not None:
            self.monitor.reconfigure(monitor_settings(cfg), health_config(cfg, len(self.pools)))

    def drain(self) -> None:
        """Every pool drops its idle and warm connections (the network path changed)."""
        for pool in self.pools:
            pool.drain()

    def status(self) -> dict:
        """``health`` and ``leaks`` for the status report (any thread)."""
        return {"health": self.monitor.status() if self.monitor is not None else None,
                "leaks": self.leaks.snapshot().as_dict()}

    async def aclose(self) -> None:
        """Stop the watchers, then close every pool (each bounded)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pool.aclose()


def _probe_tls(up: UpstreamConfig):
    """TLS for probing an https:// proxy, trusting its configured CA file if any."""
    return probe_tls_context(str(up.ca_file) if up.ca_file else None)


def monitor_settings(cfg: Config) -> MonitorSettings:
    """What the monitor probes, from ``[health]``."""
    h = cfg.health
    return MonitorSettings(probe_url=h.probe_url, expected_status=h.expected_status, probe_timeout_s=h.probe_timeout_s,
                           echo_url=h.echo_url, echo_interval_s=h.echo_interval_s)


def health_config(cfg: Config, count: int) -> HealthConfig:
    """The state machine's timings and thresholds from ``[health]``, and each upstream's country."""
    h = cfg.health
    return HealthConfig(active_interval_s=h.active_interval_s, standby_interval_s=h.standby_interval_s,
                        fail_threshold=h.fail_threshold, recover_successes=h.recover_successes,
                        failback_hold_s=h.failback_hold_s,
                        failback_hold_max_s=max(h.failback_hold_s, HealthConfig().failback_hold_max_s),
                        expected_countries=tuple(settings_for(cfg, i).country for i in range(count)))


def build(cfg: Config, urls: list[str], upstreams: list[Upstream], pinned: dict[str, str]) -> Outbound:
    """Pools, set, monitor and leak detector for ``urls`` (secret) / ``upstreams`` (parsed)."""
    pools = [make_pool(cfg, i, url, pinned) for i, url in enumerate(urls)]
    first = upstreams[0]
    target = None if first.is_direct else ProbeTarget(pinned.get(first.host, first.host), first.port)
    leaks = LeakDetector(read_counters=killswitch.counters, target=target, own_addresses=local_addresses,
                         kill_switch=cfg.capture.kill_switch)
    if first.is_direct or not cfg.health.enabled:
        return Outbound(pools[0], pools, None, leaks)
    upset = UpstreamSet(pools, names=[u.redacted() for u in upstreams])
    monitor = HealthMonitor(
        [p.proxy for p in pools], upset, settings=monitor_settings(cfg), config=health_config(cfg, len(pools)),
        mark=cfg.routing.fwmark, addresses=pinned,
        tls=[_probe_tls(settings_for(cfg, i)) if u.kind is UpstreamKind.HTTPS else None
             for i, u in enumerate(upstreams)],
        on_exit=leaks.exit_seen,
    )
    upset.on_signal = monitor.signal
    return Outbound(upset, pools, monitor, leaks)


def resolve(upstreams: list[Upstream]) -> dict[str, str]:
    """Every proxy's address (name -> IP), looked up once before capture starts.

    Once routing and the kill switch are in place, an unmarked lookup by the daemon
    would be captured like any other; the pools connect to these addresses instead.
    """
    import ipaddress

    pinned: dict[str, str] = {}
    for up in upstreams:
        if up.is_direct or up.host in pinned:
            continue
        try:
            ipaddress.ip_address(up.host)
            pinned[up.host] = up.host
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise RuntimeError(f"cannot resolve the proxy {up.host}: {exc.strerror}") from None
        v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        pinned[up.host] = (v4 or [infos[0][4][0]])[0]
    return pinned


async def supervised(name: str, run) -> None:
    """Run ``run()`` until cancelled; a failure is logged (once a minute at most) and the
    task starts again after ``RESTART_DELAY_S``: the watchers must outlive their bugs."""
    logged = -LOG_EVERY_S
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line, then start again
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # a TaskGroup's: name the cause
                exc = exc.exceptions[0]
            now = time.monotonic()
            if now - logged >= LOG_EVERY_S:
                logged = now
                log.error("%s failed (%s: %s); restarting it in %g s", name, type(exc).__name__,
                          str(exc)[:200], RESTART_DELAY_S)
        await asyncio.sleep(RESTART_DELAY_S)
