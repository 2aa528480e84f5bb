"""HTTP/2 keep-alive: when to PING a silent connection and when to give it up. Pure
(time comes in as an argument); the connection that owns the timer acts on its answer."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["KeepAlive", "PingAction", "PingKind"]


class PingKind(enum.Enum):
    """What the keep-alive timer asks for."""

    PING = "ping"  # silent for ``interval``: send a PING
    DEAD = "dead"  # no ACK within ``timeout``: the connection is gone
    WAIT = "wait"  # nothing to do yet


@dataclass(frozen=True, slots=True)
class PingAction:
    """What the keep-alive timer asks for now, and in how many seconds to ask it again."""

    kind: PingKind
    wait: float


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
        if self._ping_sent is not None:  # waiting for the ACK
            left = self._ping_sent + self.timeout - now
            if left <= 0:
                return PingAction(PingKind.DEAD, 0.0)
            return PingAction(PingKind.WAIT, left)
        left = self._last_rx + self.interval - now
        if left <= 0:
            return PingAction(PingKind.PING, self.timeout)  # look again when the ACK is due
        return PingAction(PingKind.WAIT, left)
