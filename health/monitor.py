"""The health monitor: the async adapter driving :class:`.state.HealthMachine`.

One task of the daemon, off every flow's path. It probes the upstreams the machine says
are due (each probe a task of its TaskGroup), hears passive signals from the
:class:`~atlantic.pool.upstreams.UpstreamSet` (a refused connection, a 407, a provider's
error) and turns them into an immediate probe, verifies the exit address through the
active upstream (after start, after a failover, after a session rotation and every
``echo_interval_s``), and publishes the machine's choice to the set as one immutable
:class:`~atlantic.pool.upstreams.Choice`. A flow never waits for it.

A probe that the proxy answered with something other than the expected status, without
any sign that the proxy itself failed (a 407, a provider's error header), means the
proxy works and the probe URL answered otherwise: the upstream stays up, and the reason
says what the probe URL did. So does a probe that connected to the proxy and then heard
nothing in time: only a failed connect (refused, reset, silent) or the proxy's own error
takes an upstream down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from atlantic.health.probe import ProbeResult, echo, probe
from atlantic.health.signals import PassiveSignal, classify_proxy_response
from atlantic.health.state import HealthConfig, HealthMachine, HealthSnapshot, UpstreamState
from atlantic.pool.proxyurl import ProxyURLCache
from atlantic.pool.upstreams import Choice, FlowFailure, Signal, UpstreamSet

__all__ = ["HealthMonitor", "MonitorSettings"]

log = logging.getLogger("atlantic.health")

_FAILURE_SIGNALS = {
    FlowFailure.REFUSED: PassiveSignal.CONNECT_REFUSED,
    FlowFailure.TIMEOUT: PassiveSignal.CONNECT_TIMEOUT,
    FlowFailure.SLOW: PassiveSignal.CONNECT_TIMEOUT,  # silence so far: a probe tells a slow origin from a gone proxy
    FlowFailure.AUTH: PassiveSignal.AUTH_FAILED_407,
}


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """What to probe and how (``[health]`` in the config)."""

    probe_url: str = "http://cp.cloudflare.com/generate_204"
    expected_status: int = 204
    probe_timeout_s: float = 3.0  # with two failures needed: a blackholed proxy is left within ~9 s
    echo_url: str | None = "http://ip-api.com/json/?fields=query,countryCode"
    echo_interval_s: float = 600.0


class HealthMonitor:
    """Probes, passive signals, exit checks; publishes the active upstream."""

    def __init__(self, caches: Sequence[ProxyURLCache], upstreams: UpstreamSet, *,
                 settings: MonitorSettings = MonitorSettings(), config: HealthConfig | None = None,
                 mark: int | None = None, addresses: Mapping[str, str] | None = None,
                 tls: Sequence[ssl.SSLContext | None] | None = None,
                 on_exit: Callable[[str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.caches, self.upstreams, self.settings = tuple(caches), upstreams, settings
        self.machine = HealthMachine(len(self.caches), config)
        self.mark, self.addresses = mark, dict(addresses or {})
        self.tls = tuple(tls) if tls is not None else (None,) * len(self.caches)
        self.on_exit, self.clock = on_exit, clock
        self._wake = asyncio.Event()
        self._published: HealthSnapshot | None = None
        self._echo_due: float = 0.0  # monotonic time of the next exit check (0: now)
        self._echo_key: tuple[int | None, object] | None = None  # (active, session key) last checked
        self._echoing = False

    # ---- inputs from the flows' side (on the loop) ----
    def signal(self, signal: Signal) -> None:
        """A flow met a failure on an upstream: classify it and ask for a probe."""
        if signal.failure is FlowFailure.RESPONSE:
            verdict = classify_proxy_response(signal.status, signal.headers)
            if not verdict.is_proxy_failure or verdict.signal is None:
                return  # the origin's own answer: never counts against the proxy
            passive = verdict.signal
        else:
            passive = _FAILURE_SIGNALS[signal.failure]
        self.machine.passive(signal.index, passive, self.clock())
        self._wake.set()

    def reconfigure(self, settings: MonitorSettings, config: HealthConfig) -> None:
        """New probe settings and timings (a reload); states and history are kept."""
        self.settings = settings
        self.machine.config = config
        self._wake.set()

    # ---- the task ----
    async def run(self) -> None:
        """Until cancelled: probe what is due, publish, check the exit."""
        async with asyncio.TaskGroup() as probes:
            while True:
                now = self.clock()
                for i in self.machine.due(now):
                    probes.create_task(self._probe(i))
                self._publish(now)
                if self._wants_echo(now):
                    self._echoing = True
                    probes.create_task(self._check_exit())
                wait = min(self.machine.next_wakeup(now), max(0.0, self._echo_due - now) or 5.0, 5.0)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.02, wait)):
                        await self._wake.wait()

    async def _probe(self, i: int) -> None:
        cache = self.caches[i]
        result = await probe(cache.current, self.settings.probe_url,
                             expected_status=self.settings.expected_status, mark=self.mark,
                             timeout=self.settings.probe_timeout_s, addresses=self.addresses,
                             tls=self.tls[i], clock=self.clock)
        ok, reason = self._judge(result)
        self.machine.probe_result(i, ok, self.clock(), result.latency_s if ok else None, reason)
        self._wake.set()

    def _judge(self, result: ProbeResult) -> tuple[bool, str]:
        if not result.ok and result.status == 0 and result.reached_proxy:
            # Connected, then silence: a probe URL the exit cannot reach (Squid waiting on its
            # DNS, a firewalled probe host) looks the same as a wedged proxy. Counting it would
            # take a working upstream down (with one upstream: the whole machine offline) for
            # the probe URL's sake; a proxy that vanished fails the connect instead.
            return True, (f"the proxy accepted the probe; the probe URL gave no answer within "
                          f"{self.settings.probe_timeout_s:g} s")
        if result.ok or result.status == 0:
            return result.ok, result.reason
        verdict = classify_proxy_response(result.status, result.headers)
        if verdict.is_proxy_failure:
            return False, f"{result.reason} ({verdict.reason})" if verdict.reason else result.reason
        return True, (f"the proxy answers; the probe URL gave {result.status} "
                      f"(expected {self.settings.expected_status})")

    def _wants_echo(self, now: float) -> bool:
        if self.settings.echo_url is None or self._echoing:
            return False
        snap = self.machine.snapshot(now)
        if snap.active is None or snap.upstreams[snap.active].state is not UpstreamState.UP:
            return False
        key = (snap.active, self.caches[snap.active].current.key)
        return now >= self._echo_due or key != self._echo_key  # failover or session rotation

    async def _check_exit(self) -> None:
        try:
            snap = self.machine.snapshot(self.clock())
            i = snap.active
            if i is None:
                return
            session = self.caches[i].current
            result = await echo(session, self.settings.echo_url or "", mark=self.mark,
                                timeout=self.settings.probe_timeout_s, addresses=self.addresses,
                                tls=self.tls[i])
            now = self.clock()
            self._echo_key = (i, session.key)
            self._echo_due = now + self.settings.echo_interval_s
            if result.ip is not None:
                self.machine.exit_info(i, result.ip, result.country, now)
                view = self.machine.snapshot(now).upstreams[i]
                if view.alert:
                    log.warning("exit check: %s: %s", self.upstreams.names[i], view.alert)
            else:
                self.machine.exit_failed(i, result.error or "exit check failed", now)
            if self.on_exit is not None:
                try:
                    self.on_exit(result.ip)
                except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop the monitor
                    log.error("exit check listener failed: %s: %s", type(exc).__name__, str(exc)[:200])
        finally:
            self._echoing = False
            self._wake.set()

    def _publish(self, now: float) -> None:
        snap = self.machine.snapshot(now)
        old = self._published
        if snap is old:
            return
        self._published = snap
        reason = ""
        if snap.active is None:
            reasons = "; ".join(f"{self.upstreams.names[v.index]}: {v.last_reason or v.state.value}"
                                for v in snap.upstreams)
            reason = f"every upstream is down ({reasons})"
        self.upstreams.choose(Choice(snap.active, reason[:400]))
        if old is None or old.active != snap.active:
            if snap.active is None:
                log.error("all upstreams down: flows are refused until one recovers (%s)", reason)
            elif old is not None:
                log.warning("upstream now %s (was %s)", self.upstreams.names[snap.active],
                            "none" if old.active is None else self.upstreams.names[old.active])

    # ---- status ----
    def status(self) -> dict:
        """The ``health`` part of ``status`` (from the last published snapshot; any thread)."""
        snap = self._published or self.machine.snapshot(self.clock())
        now = self.clock()
        ups = []
        for v in snap.upstreams:
            ups.append({
                "url": self.upstreams.names[v.index],
                "state": v.state.value,
                "active": v.index == snap.active,
                "last_probe_s_ago": None if v.last_probe_at is None else round(now - v.last_probe_at, 1),
                "last_result": v.last_reason,
                "latency_ms": None if v.latency_s is None else round(v.latency_s * 1000, 1),
                "exit_ip": v.exit_ip,
                "exit_country": v.exit_country,
                "exit_error": v.exit_error,
                "alert": v.alert,
            })
        return {"active": None if snap.active is None else self.upstreams.names[snap.active],
                "all_down": snap.all_down, "failovers": snap.failovers, "upstreams": ups}
