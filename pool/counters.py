"""Pool counters and the time-to-first-byte window, pure (times come in as arguments)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Counters", "KeepAlive", "PingAction", "percentile"]

TTFB_WINDOW = 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an already sorted, non-empty list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without float drift
    return sorted_values[int(rank) - 1]


class Counters:
    """Plain integer counters (hot path: one attribute increment) and a TTFB window."""

    __slots__ = ("requests", "connections_opened", "reused", "h2_streams", "tunnels_warm",
                 "tunnels_cold", "retries", "connections_open", "ttfb_ms")

    def __init__(self, window: int = TTFB_WINDOW) -> None:
        self.requests = self.connections_opened = self.reused = self.h2_streams = 0
        self.tunnels_warm = self.tunnels_cold = self.retries = self.connections_open = 0
        self.ttfb_ms: deque[float] = deque(maxlen=window)

    def record_ttfb(self, sent_at: float, head_at: float) -> None:
        """One response head arrived ``head_at - sent_at`` seconds after the request left."""
        self.ttfb_ms.append((head_at - sent_at) * 1000.0)

    def snapshot(self) -> dict:
        """Every counter, plus ``ttfb_ms_p50/p95/p99`` (None before the first response)."""
        out = {name: getattr(self, name) for name in self.__slots__ if name != "ttfb_ms"}
        values = sorted(self.ttfb_ms)
        for q in (50, 95, 99):
            out[f"ttfb_ms_p{q}"] = round(percentile(values, q), 2) if values else None
        return out


@dataclass(frozen=True, slots=True)
class PingAction:
    """What the HTTP/2 keep-alive timer should do now: ``"ping"``, ``"dead"`` or ``"wait"``."""

    kind: str
    wait: float  # seconds until the timer should look again


class KeepAlive:
    """HTTP/2 PING scheduling: ping after ``interval`` s of silence, dead after ``timeout`` more.

    The connection reports every frame received (:meth:`on_activity`) and every PING
    sent; :meth:`due` says what to do. Pure: ``now`` comes in.
    """

    __slots__ = ("interval", "timeout", "_last_rx", "_ping_sent")

    def __init__(self, now: float, interval: float = 20.0, timeout: float = 10.0) -> None:
        self.interval, self.timeout = interval, timeout
        self._last_rx = now
        self._ping_sent: float | None = None

    def on_activity(self, now: float) -> None:
        """A frame came in: the peer is alive (a PING ACK counts too)."""
        self._last_rx = now
        self._ping_sent = None

    def on_ping_sent(self, now: float) -> None:
        """We sent a PING and wait for its ACK."""
        self._ping_sent = now

    def due(self, now: float) -> PingAction:
        """Ping, declare dead, or wait (with how long)."""
        if self._ping_sent is not None:
            left = self._ping_sent + self.timeout - now
            return PingAction("dead", 0.0) if left <= 0 else PingAction("wait", left)
        left = self._last_rx + self.interval - now
        return PingAction("ping", self.timeout) if left <= 0 else PingAction("wait", left)
