"""Upstream health, pure: which upstreams are up, which one serves new flows, what to probe when.

Upstreams come in priority order (0 is the primary). The async prober asks
:meth:`~HealthMachine.due` what to probe, reports results, passive signals and exit checks,
sleeps :meth:`~HealthMachine.next_wakeup` seconds and publishes :meth:`~HealthMachine.snapshot`.
No asyncio, sockets or clock: the time comes in as ``now``.

Failover is immediate: the active upstream goes DOWN, the first UP one (else the first not
yet judged) takes over. Failback is slow on purpose, so a lossy primary cannot make traffic
flap: a DOWN upstream needs ``recover_successes`` good probes in a row to be UP, then a good
probe after ``failback_hold_s`` UP with no failed probe (and the current choice that old
too); each failback that ends DOWN again doubles that upstream's hold (flap damping).

Probes: the active upstream, and UP ones that could fail back (their hold must see
probes), every ``active_interval_s``; the others (DOWN ones too) every ``standby_interval_s``;
all of them at the active pace while all are DOWN (getting any back is all that matters).
A failure of an upstream not yet DOWN is retried after ``retry_after_failure_s``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .signals import PassiveSignal, one_line

__all__ = ["HealthConfig", "HealthMachine", "HealthSnapshot", "PassiveSignal",
           "UpstreamState", "UpstreamView"]


class UpstreamState(enum.Enum):
    """Health of one upstream as the probes judged it."""

    UNKNOWN = "unknown"  # never judged yet (counts as usable: the primary starts active)
    UP = "up"
    DOWN = "down"


_S = UpstreamState
# (state, probe ok) -> (next state, the HealthConfig field saying how many in a row it
# takes; None: one is enough). Pairs not listed keep their state.
_TRANSITIONS: dict[tuple[UpstreamState, bool], tuple[UpstreamState, str | None]] = {
    (_S.UNKNOWN, True): (_S.UP, None),  # never failed: nothing to distrust
    (_S.UNKNOWN, False): (_S.DOWN, "fail_threshold"),
    (_S.UP, False): (_S.DOWN, "fail_threshold"),
    (_S.DOWN, True): (_S.UP, "recover_successes"),
}


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Timings and thresholds of the monitor; ``expected_countries[i]`` is upstream i's
    exit country (ISO code) or None, for the exit-country alert."""

    active_interval_s: float = 30.0  # the upstream carrying traffic
    standby_interval_s: float = 120.0  # the others: ready to take over, cheap to watch
    all_down_interval_s: float = 2.0  # every upstream down: the machine is offline, so look often
    fail_threshold: int = 2  # failed probes in a row -> DOWN (one lost probe is not an outage)
    retry_after_failure_s: float = 0.5  # a refused proxy is DOWN ~1 s after its first failure
    recover_successes: int = 3  # good probes in a row before a DOWN upstream is UP again
    failback_hold_s: float = 60.0  # UP (no failed probe) this long before it is active again
    failback_hold_max_s: float = 1800.0  # the hold doubles each time a failback fails, to this
    passive_spacing_s: float = 1.0  # at most one passive-triggered probe per upstream per second
    lost_probe_s: float = 60.0  # a probe handed out and never reported is handed out again
    expected_countries: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if min(self.fail_threshold, self.recover_successes) < 1:
            raise ValueError("health: fail_threshold and recover_successes must be at least 1")
        times = (self.active_interval_s, self.standby_interval_s, self.retry_after_failure_s,
                 self.lost_probe_s, self.all_down_interval_s)
        if not all(math.isfinite(t) and t > 0 for t in times):
            raise ValueError("health: probe intervals, retry and lost-probe times must be > 0")
        holds_ok = 0 <= self.failback_hold_s <= self.failback_hold_max_s
        if not (holds_ok and self.passive_spacing_s >= 0):
            raise ValueError("health: need 0 <= failback_hold_s <= failback_hold_max_s, "
                             "passive_spacing_s >= 0")

    def expected_country(self, i: int) -> str | None:
        """Upstream ``i``'s expected exit country, upper case, or None when not configured."""
        c = self.expected_countries[i] if i < len(self.expected_countries) else None
        return c.strip().upper() if c else None


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """One upstream in a snapshot (times are the ``now`` values passed in)."""

    index: int
    state: UpstreamState
    consecutive_failures: int
    consecutive_successes: int
    last_probe_at: float | None
    last_ok: bool | None
    last_reason: str | None
    latency_s: float | None  # of the last probe, when it succeeded
    up_since: float | None
    down_since: float | None
    exit_ip: str | None
    exit_country: str | None
    exit_checked_at: float | None
    exit_error: str | None
    alert: str | None  # exit country differs from the configured one
    hold_s: float  # failback hold now (doubled by each failback that failed)


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """What the monitor publishes; a new object (and ``version``) only when something changed.

    ``active`` is the upstream for new flows, None when all are DOWN (fail closed).
    ``failovers`` counts every change of ``active`` (to and from None included).
    """

    version: int
    active: int | None
    all_down: bool
    failovers: int
    active_since: float | None
    upstreams: tuple[UpstreamView, ...]


@dataclass(eq=False, slots=True)
class _Upstream:
    """Mutable bookkeeping of one upstream (owned by :class:`HealthMachine`)."""

    hold_s: float
    state: UpstreamState = UpstreamState.UNKNOWN
    failures: int = 0
    successes: int = 0
    last_probe_at: float | None = None  # when the last result came in
    last_ok: bool | None = None
    last_reason: str | None = None
    latency_s: float | None = None
    up_since: float | None = None
    down_since: float | None = None
    last_failure_at: float | None = None
    started_at: float | None = None  # a probe handed out by due() and not reported yet
    last_started_at: float | None = None
    urgent_since: float | None = None  # a passive signal asked for a probe
    exit_ip: str | None = None
    exit_country: str | None = None
    exit_checked_at: float | None = None
    exit_error: str | None = None


class HealthMachine:
    """Health of ``count`` upstreams in priority order and the choice of the active one."""

    def __init__(self, count: int, config: HealthConfig | None = None) -> None:
        self.config = config if config is not None else HealthConfig()
        if count < 1:
            raise ValueError("health: at least one upstream is needed")
        if len(self.config.expected_countries) > count:
            raise ValueError("health: more expected countries than upstreams")
        self._ups = [_Upstream(self.config.failback_hold_s) for _ in range(count)]
        self._active: int | None = 0  # the primary serves while nothing is known
        self._active_since: float | None = None
        self._on_probation = False  # the active one came back by failback, not yet trusted
        self._failovers = 0
        self._version = 0
        self._snap: HealthSnapshot | None = None

    # -- inputs ---------------------------------------------------------------------------

    def probe_result(self, i: int, ok: bool, now: float, latency_s: float | None = None,
                     reason: str | None = None) -> None:
        """A probe of upstream ``i`` finished: ``ok``, its latency, and why it failed."""
        u = self._ups[i]
        u.started_at = None
        u.last_probe_at, u.last_ok = now, bool(ok)
        u.last_reason = one_line(reason) if reason is not None else None
        if ok:
            u.successes, u.failures = u.successes + 1, 0
            good = isinstance(latency_s, (int, float)) and 0 <= latency_s < math.inf
            u.latency_s = float(latency_s) if good else None  # type: ignore[arg-type]
        else:
            u.failures, u.successes = u.failures + 1, 0
            u.latency_s, u.last_failure_at = None, now
        rule = _TRANSITIONS.get((u.state, bool(ok)))
        if rule is not None:
            target, need = rule
            if need is None or (u.successes if ok else u.failures) >= getattr(self.config, need):
                u.state = target
                u.up_since, u.down_since = (now, None) if target is _S.UP else (None, now)
        if i == self._active and self._on_probation:
            self._probation(u, now)
        self._snap = None
        self._advance(now, i if ok else None)

    def passive(self, i: int, signal: PassiveSignal, now: float) -> None:
        """A flow met ``signal`` at upstream ``i``: probe it soon (never a state change).

        A storm asks for one probe: the request is a flag, served at most once per
        ``passive_spacing_s``. A DOWN upstream carries no new flows: ignored.
        """
        u = self._ups[i]
        if u.state is not _S.DOWN and u.urgent_since is None:
            u.urgent_since = now

    def exit_info(self, i: int, ip: str, country: str | None, now: float) -> None:
        """Exit verification of upstream ``i`` saw ``ip`` in ``country`` (ISO code or None)."""
        u = self._ups[i]
        u.exit_ip = one_line(ip, 64)
        u.exit_country = one_line(country, 16).upper() if country else None
        u.exit_checked_at, u.exit_error = now, None
        self._snap = None

    def exit_failed(self, i: int, reason: str, now: float) -> None:
        """Exit verification of upstream ``i`` failed; the last exit seen stays shown."""
        u = self._ups[i]
        u.exit_checked_at, u.exit_error = now, one_line(reason) or "exit check failed"
        self._snap = None

    # -- outputs --------------------------------------------------------------------------

    def due(self, now: float) -> tuple[int, ...]:
        """Upstreams to probe now. Hands them out: each must get one :meth:`probe_result`
        (until it does, or ``lost_probe_s`` passes, it is not handed out again)."""
        out = tuple(i for i in range(len(self._ups)) if self._due_at(i) <= now)
        for i in out:
            u = self._ups[i]
            u.started_at = u.last_started_at = now
            u.urgent_since = None  # this probe answers every signal so far
        return out

    def next_wakeup(self, now: float) -> float:
        """Seconds until a probe is due (0: now). Only inputs change the state, so the
        adapter sleeps this long or until the next input, whichever comes first."""
        return max(0.0, min(self._due_at(i) for i in range(len(self._ups))) - now)

    def snapshot(self, now: float) -> HealthSnapshot:
        """The current snapshot: the same object as last time unless an input changed it
        (``now`` is not needed today: nothing changes by time alone, see :meth:`_advance`)."""
        if self._snap is None:
            self._version += 1
            self._snap = HealthSnapshot(
                self._version, self._active, self._active is None, self._failovers,
                self._active_since, tuple(self._view(i) for i in range(len(self._ups))))
        return self._snap

    # -- the choice -----------------------------------------------------------------------

    def _probation(self, u: _Upstream, now: float) -> None:
        """Flap damping: a failed-back upstream that goes DOWN again waits twice as long
        next time (a lossy primary ends up left alone); one that carries traffic for
        ``failback_hold_max_s`` with no failed probe is trusted again: its hold resets."""
        cfg = self.config
        if u.state is _S.DOWN:
            u.hold_s = min(2 * u.hold_s, cfg.failback_hold_max_s)
            self._on_probation = False
        elif u.failures == 0 and self._active_since is not None:
            clean_since = max(t for t in (self._active_since, u.last_failure_at) if t is not None)
            if now - clean_since >= cfg.failback_hold_max_s:
                u.hold_s, self._on_probation = cfg.failback_hold_s, False

    def _advance(self, now: float, probed_ok: int | None) -> None:
        """Apply the active choice after a probe result (``probed_ok``: a good one's index).

        A failback happens only on a fresh good probe of a candidate once its hold is
        over, never by time alone: so it never races a probe that is about to fail.
        """
        chosen = self._choose(now, probed_ok)
        if chosen != self._active:
            self._on_probation = (chosen is not None and self._active is not None
                                  and chosen < self._active)
            self._active, self._active_since = chosen, now
            self._failovers += 1
            self._snap = None

    def _choose(self, now: float, probed_ok: int | None) -> int | None:
        cur, ups = self._active, self._ups
        if cur is not None and ups[cur].state is not _S.DOWN:
            if probed_ok is None or probed_ok >= cur:
                return cur
            return next((j for j in range(cur) if self._failback_time(j) <= now), cur)
        # Forced (the active went DOWN, or none was): the first UP one at once, else the
        # first not yet judged; None when all are DOWN.
        for wanted in (_S.UP, _S.UNKNOWN):
            j = next((j for j, u in enumerate(ups) if u.state is wanted), None)
            if j is not None:
                return j
        return None

    def _failback_time(self, j: int) -> float:
        """When upstream ``j`` may take over from a lower-priority active one (inf: not now)."""
        u = self._ups[j]
        if u.state is not _S.UP or u.failures or u.up_since is None:
            return math.inf
        # UP with no failed probe, and the current choice, both at least the hold old
        since = [t for t in (u.up_since, u.last_failure_at, self._active_since) if t is not None]
        return max(since) + u.hold_s

    def _due_at(self, i: int) -> float:
        """When upstream ``i`` should next be probed (``-inf``: never probed, due at once)."""
        u, cfg = self._ups[i], self.config
        if u.started_at is not None:
            return u.started_at + cfg.lost_probe_s
        if u.last_probe_at is None:
            return -math.inf
        if u.last_ok is False and u.state is not _S.DOWN:
            t = u.last_probe_at + cfg.retry_after_failure_s
        elif self._active is None:  # all DOWN: nothing is carried until one recovers
            t = u.last_probe_at + min(cfg.all_down_interval_s, cfg.active_interval_s)
        elif i == self._active or (i < self._active and u.state is _S.UP):
            # the active one, or a failback candidate (its hold must see probes)
            t = u.last_probe_at + cfg.active_interval_s
        else:
            t = u.last_probe_at + cfg.standby_interval_s
        if u.urgent_since is not None:
            spaced = (u.last_started_at if u.last_started_at is not None else -math.inf)
            t = min(t, max(u.urgent_since, spaced + cfg.passive_spacing_s))
        return t

    def _view(self, i: int) -> UpstreamView:
        u = self._ups[i]
        expected, alert = self.config.expected_country(i), None
        if expected and u.exit_checked_at is not None and u.exit_ip is not None \
                and u.exit_country != expected:
            alert = f"exit country {u.exit_country or 'unknown'}, expected {expected}"
        return UpstreamView(i, u.state, u.failures, u.successes, u.last_probe_at, u.last_ok,
                            u.last_reason, u.latency_s, u.up_since, u.down_since, u.exit_ip,
                            u.exit_country, u.exit_checked_at, u.exit_error, alert, u.hold_s)

    def __repr__(self) -> str:
        active = "none" if self._active is None else self._active
        states = ", ".join(f"{i}: {u.state.value}" for i, u in enumerate(self._ups))
        return f"<Health [active: {active}, failovers: {self._failovers} | {states}]>"

