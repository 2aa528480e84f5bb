"""Several upstreams in priority order behind one :class:`~atlantic.pool.api.Pool`.

Each upstream has a pool of its own (:class:`~atlantic.pool.pool.UpstreamPool`); which
one serves new flows is a :class:`Choice`: an immutable object that the health monitor
replaces as a whole (``choose``). A request reads one attribute and takes no lock; the
monitor is never awaited. Tunnels and responses already under way stay on the pool that
opened them until they end, and the pool that lost the choice closes its idle
connections (``drain``), so its pooled connections go away without cutting anything.

Failures met on the way (refused, reset or silent proxy, 407, a 5xx from the proxy) are
reported through ``on_signal`` (the monitor turns them into an immediate probe); so is a
request or tunnel still without an answer after ``slow_after`` seconds: a proxy that
vanished (packets silently dropped) shows up only as silence, and waiting for the
connect timeout would leave new flows going to it for that much longer. The success path
pays one timer (armed and cancelled) and one comparison of the status code.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from atlantic.pool.api import ByteStream, Pool, RequestHead, ResponseStream
from atlantic.pool.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)

__all__ = ["AllUpstreamsDownError", "Choice", "FlowFailure", "Signal", "UpstreamSet"]


SLOW_AFTER_S = 2.0  # past a lost SYN's first retransmission (1 s) and a usual proxy answer


class AllUpstreamsDownError(UpstreamUnreachableError):
    """No upstream is healthy: Atlantic fails closed (flows are refused, never sent direct)."""


class FlowFailure(enum.Enum):
    """What a flow met on an upstream, as the health monitor needs to hear it."""

    REFUSED = "refused"  # connection refused or reset by the proxy
    TIMEOUT = "timeout"  # no connection, or no answer, in time
    AUTH = "auth"  # 407 from the proxy
    SLOW = "slow"  # no answer yet after slow_after seconds (the flow still waits)
    RESPONSE = "response"  # a 407 / 5xx response: the monitor reads its headers


@dataclass(frozen=True, slots=True)
class Signal:
    """One failure seen on upstream ``index`` (``status``/``headers`` for RESPONSE)."""

    index: int
    failure: FlowFailure
    detail: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Choice:
    """Which upstream serves new flows: ``index`` into the set, or None (all down)."""

    index: int | None
    reason: str = ""  # why none is chosen, one line (shown to the application and in status)


class UpstreamSet:
    """A :class:`Pool` over several upstream pools; new flows go to the chosen one."""

    def __init__(self, pools: Sequence[Pool], *, names: Sequence[str] | None = None,
                 on_signal: Callable[[Signal], None] | None = None, slow_after: float = SLOW_AFTER_S) -> None:
        if not pools:
            raise ValueError("an UpstreamSet needs at least one upstream")
        self.pools = tuple(pools)
        self.names = tuple(names) if names is not None else tuple(f"upstream {i + 1}" for i in range(len(pools)))
        self.on_signal = on_signal
        self.slow_after = slow_after
        self.choice = Choice(0)
        self.failovers = 0

    # ---- the monitor's side ----
    def choose(self, choice: Choice) -> None:
        """Publish a new choice (from the monitor; never awaited by a flow). The pool that
        lost it closes its idle connections; its busy ones finish what they carry."""
        old = self.choice
        if choice == old:
            return
        self.choice = choice
        if old.index is not None and old.index != choice.index:
            self.failovers += 1
            self.pools[old.index].drain()

    # ---- the flows' side (hot path) ----
    def _current(self) -> tuple[int, Pool]:
        choice = self.choice
        if choice.index is None:
            raise AllUpstreamsDownError(choice.reason or "every upstream is down; flows are refused")
        return choice.index, self.pools[choice.index]

    async def request(self, head: RequestHead, body: AsyncIterator[bytes] | None) -> ResponseStream:
        """Send one request on the chosen upstream (see ``api.Pool.request``)."""
        index, pool = self._current()
        timer = self._watch(index)
        try:
            response = await pool.request(head, body)
        except UpstreamError as exc:
            self._report(index, exc)
            raise
        finally:
            timer.cancel()
        status = response.head.status
        if status >= 500 or status == 407:
            self._signal(Signal(index, FlowFailure.RESPONSE, f"{status} {response.head.reason}",
                                status, response.head.headers))
        return response

    async def open_tunnel(self, host: str, port: int) -> ByteStream:
        """A tunnel through the chosen upstream (see ``api.Pool.open_tunnel``)."""
        index, pool = self._current()
        timer = self._watch(index)
        try:
            return await pool.open_tunnel(host, port)
        except UpstreamError as exc:
            self._report(index, exc)
            raise
        finally:
            timer.cancel()

    def _watch(self, index: int) -> asyncio.TimerHandle:
        """Signal SLOW if the caller is still waiting after ``slow_after`` seconds (the
        Signal is built only then: the usual request arms and cancels a bare timer)."""
        return asyncio.get_running_loop().call_later(self.slow_after, self._slow, index)

    def _slow(self, index: int) -> None:
        self._signal(Signal(index, FlowFailure.SLOW, f"no answer within {self.slow_after:g} s"))

    def _report(self, index: int, exc: UpstreamError) -> None:
        if isinstance(exc, UpstreamAuthError):
            self._signal(Signal(index, FlowFailure.AUTH, str(exc), 407))
        elif isinstance(exc, UpstreamTimeoutError):
            self._signal(Signal(index, FlowFailure.TIMEOUT, str(exc)))
        elif isinstance(exc, UpstreamUnreachableError):
            self._signal(Signal(index, FlowFailure.REFUSED, str(exc)))
        elif isinstance(exc, UpstreamStatusError) and exc.status >= 500:
            self._signal(Signal(index, FlowFailure.RESPONSE, str(exc), exc.status,
                                tuple(getattr(exc, "headers", ()))))

    def _signal(self, signal: Signal) -> None:
        if self.on_signal is not None:
            self.on_signal(signal)

    # ---- life and status ----
    def counters(self) -> dict:
        """The chosen pool's counters, plus per-upstream ones and the failover count."""
        index = self.choice.index
        out = dict(self.pools[index].counters()) if index is not None else {}
        out["upstreams"] = [dict(p.counters(), name=n) for n, p in zip(self.names, self.pools)]
        out["failovers"] = self.failovers
        return out

    async def start(self) -> None:
        """Start every pool's background work."""
        for pool in self.pools:
            await pool.start()

    async def aclose(self) -> None:
        """Close every pool (each bounded)."""
        for pool in self.pools:
            await pool.aclose()
