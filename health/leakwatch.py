"""The runtime leak detector's bookkeeping, pure: observations in, a snapshot and alerts out.

Three checks feed it, each run off the hot path by :mod:`.leakdetect`:

- ``blocked``: the kill switch's counters (packets it rejected since ``up``, DNS among
  them). A growing count is not a leak (the packets were stopped) but says something on
  the machine tries to get around the tunnel; the snapshot shows the totals.
- ``bound_socket``: a socket bound to the physical interface, without the daemon's mark,
  must fail to get out (Mullvad's leak checker does the same). Run after ``up`` and after
  every network change.
- ``exit_address``: the exit address seen through the tunnel must never be one of the
  machine's own addresses.

An alert is one log line when a check turns bad (and one when it is good again), never
one per packet or per run: ``alerts`` returns only the changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Check", "CheckResult", "LeakSnapshot", "LeakWatch"]


class Check(enum.Enum):
    """The leak checks."""

    BOUND_SOCKET = "bound_socket"
    EXIT_ADDRESS = "exit_address"


class CheckResult(enum.Enum):
    """The outcome of one run of a check."""

    OK = "ok"  # nothing got out
    LEAK = "leak"  # something got out: alert
    SKIPPED = "skipped"  # could not run (no kill switch, no exit address yet, ...)


@dataclass(frozen=True, slots=True)
class CheckState:
    """The last run of one check."""

    result: CheckResult
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class LeakSnapshot:
    """What ``status`` shows under ``leaks``."""

    blocked_packets: int
    blocked_dns_packets: int
    checks: dict[str, CheckState] = field(default_factory=dict)
    runs: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> result -> count
    sealed: bool = True  # no check reports a leak

    def as_dict(self) -> dict:
        """JSON-able, for ``status --json``."""
        return {
            "sealed": self.sealed,
            "blocked_packets": self.blocked_packets,
            "blocked_dns_packets": self.blocked_dns_packets,
            "last": {name: {"result": s.result.value, "detail": s.detail, "at": round(s.at, 3)}
                     for name, s in self.checks.items()},
            "checks": {name: dict(counts) for name, counts in self.runs.items()},
        }


class LeakWatch:
    """The detector's state; every method takes ``now``; nothing here does I/O."""

    def __init__(self) -> None:
        self._last = (0, 0)  # the latest counter reading
        self._carry = (0, 0)  # what tables replaced since up had counted
        self._blocked = (0, 0)
        self._checks: dict[str, CheckState] = {}
        self._runs: dict[str, dict[str, int]] = {}
        self._pending: list[str] = []
        self._snapshot: LeakSnapshot | None = None

    def counters(self, blocked_packets: int, blocked_dns_packets: int) -> None:
        """A reading of the kill switch's counters. They count from the table's creation
        at ``up``; a table made anew (restored after someone flushed it) starts at zero
        again, so what the old one counted is carried over."""
        last = self._last
        if blocked_packets < last[0] or blocked_dns_packets < last[1]:
            self._carry = (self._carry[0] + last[0], self._carry[1] + last[1])
        self._last = (blocked_packets, blocked_dns_packets)
        self._blocked = (self._carry[0] + blocked_packets, self._carry[1] + blocked_dns_packets)
        self._snapshot = None

    def result(self, check: Check, result: CheckResult, detail: str, now: float) -> None:
        """One run of ``check``; a change between OK and LEAK queues one alert line."""
        name = check.value
        before = self._checks.get(name)
        self._checks[name] = CheckState(result, detail, now)
        counts = self._runs.setdefault(name, {})
        counts[result.value] = counts.get(result.value, 0) + 1
        was_leak = before is not None and before.result is CheckResult.LEAK
        if result is CheckResult.LEAK and not was_leak:
            self._pending.append(f"LEAK: {name}: {detail}")
        elif result is CheckResult.OK and was_leak:
            self._pending.append(f"leak check {name} passes again: {detail}")
        self._snapshot = None

    def alerts(self) -> list[str]:
        """The alert lines queued since the last call (each change once)."""
        out, self._pending = self._pending, []
        return out

    def snapshot(self) -> LeakSnapshot:
        """The current state (the same object until something changes)."""
        if self._snapshot is None:
            sealed = all(s.result is not CheckResult.LEAK for s in self._checks.values())
            self._snapshot = LeakSnapshot(self._blocked[0], self._blocked[1], dict(self._checks),
                                          {k: dict(v) for k, v in self._runs.items()}, sealed)
        return self._snapshot


def exit_address_result(exit_ip: str | None, own_addresses: frozenset[str]) -> tuple[CheckResult, str]:
    """Is the exit address one of the machine's own (pure)? SKIPPED until one is known."""
    if not exit_ip:
        return CheckResult.SKIPPED, "no exit address known yet"
    if exit_ip in own_addresses:
        return CheckResult.LEAK, f"the exit address {exit_ip} is this machine's own address"
    return CheckResult.OK, f"exit {exit_ip} is not one of this machine's addresses"
