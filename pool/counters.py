"""Pool counters and the time-to-first-byte window, pure (times come in as arguments)."""

from __future__ import annotations

from collections import deque

__all__ = ["Counters", "percentile"]

TTFB_WINDOW = 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an already sorted, non-empty list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without float drift
    return sorted_values[int(rank) - 1]


class Counters:
    """Plain integer counters (hot path: one attribute increment) and a TTFB window."""

    __slots__ = ("requests", "connections_opened", "reused", "h2_streams", "tunnels_warm",
                 "tunnels_cold", "retries", "connections_open", "origin_tls_opened",
                 "origin_tls_reused", "origin_tls_resumed", "http_tunnels_opened", "http_tunnels_refused",
                 "ttfb_ms")

    def __init__(self, window: int = TTFB_WINDOW) -> None:
        self.requests = self.connections_opened = self.reused = self.h2_streams = 0
        self.tunnels_warm = self.tunnels_cold = self.retries = self.connections_open = 0
        # HTTPS requests on pooled origin TLS connections (also in connections_opened / reused)
        self.origin_tls_opened = self.origin_tls_reused = self.origin_tls_resumed = 0
        # plain HTTP in kept CONNECT tunnels per origin: tunnels opened, CONNECTs refused (-> proxy requests)
        self.http_tunnels_opened = self.http_tunnels_refused = 0
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
