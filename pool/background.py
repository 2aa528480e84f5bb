"""The pool's background tasks: idle expiry, proxy URL refresh, warm CONNECT connections,
and :class:`PoolTasks`, the TaskGroups that own every task of a pool.

Async adapter; each loop sleeps between bounded steps and runs until cancelled. Each
takes exactly what it works on, as arguments: no handle on the pool itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from atlantic.pool.conns import ConnectionSet
from atlantic.pool.errors import UpstreamError
from atlantic.pool.proxyurl import ProxySnapshot, ProxyURLCache
from atlantic.pool.transport import Transport
from atlantic.pool.tunnel import WarmSet

__all__ = ["PoolTasks", "expire_loop", "refresh_loop", "warm_loop"]

log = logging.getLogger("atlantic.pool")


async def expire_loop(conns: ConnectionSet, warm: WarmSet, proxy: ProxyURLCache,
                      clock: Callable[[], float]) -> None:
    """Close idle connections past the idle timeout, or closed by the peer; prune warm ones."""
    while True:
        now = clock()
        conns.expire(now)
        warm.prune(now, keep_key=proxy.current.key)
        nxt = conns.next_expiry()
        await asyncio.sleep(min(5.0, max(0.05, (nxt - now) if nxt else 5.0)))


async def refresh_loop(proxy: ProxyURLCache, clock: Callable[[], float],
                       warm_wanted: asyncio.Event) -> None:
    """Re-render the proxy URL snapshot every 30 s and when the sticky session runs out."""
    while True:
        await asyncio.sleep(proxy.seconds_until_refresh(clock()) or 0.05)
        if proxy.refresh(clock()):
            warm_wanted.set()  # a new session: warm connections for the new key


async def warm_loop(warm_wanted: asyncio.Event, warm: WarmSet,
                    target: Callable[[], ProxySnapshot | None],
                    open_transport: Callable[[ProxySnapshot], Awaitable[Transport]]) -> None:
    """Each time ``warm_wanted`` is set, fill ``warm`` for ``target()`` (the proxy whose
    CONNECTs want warm connections now, None when none does) with ``open_transport``."""
    while True:
        await warm_wanted.wait()
        warm_wanted.clear()
        snap = target()
        if snap is None:
            continue
        for _ in range(warm.missing(snap.key)):
            try:
                t = await open_transport(snap)
            except UpstreamError:
                await asyncio.sleep(1.0)  # proxy unreachable: try again on the next tunnel
                break
            warm.put(snap.key, t)


_last_logged: dict[str, float] = {}  # kind of failure -> when it was last logged


async def _guarded(start: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``start()``; an error (a bug) ends this task only, never its TaskGroup: one log
    line per kind of failure a minute, naming where it happened, never a traceback."""
    try:
        await start()
    except Exception as exc:  # noqa: BLE001 - logged and contained, see above
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
        kind = f"{what}:{type(exc).__name__}:{where}"
        now = time.monotonic()
        if now - _last_logged.get(kind, float("-inf")) >= 60.0:
            _last_logged[kind] = now
            log.error("pool: %s failed (%s at %s: %s)", what, type(exc).__name__, where, str(exc)[:200])


class PoolTasks:
    """Every task of one pool, owned by two TaskGroups in one runner task.

    The work group holds the background loops (given here) and whatever :meth:`spawn`
    adds (connection openers); the close group holds :meth:`spawn_close`'s closes and the
    work group. :meth:`aclose` (the shutdown event, then a bounded drain) cancels the
    work and lets the closes finish: closes outlive the work, so a connection dropped
    while the work stops still closes. Each task catches and logs its own errors.
    """

    __slots__ = ("_loops", "_runner", "_ready", "_stop", "_closes", "_work")

    def __init__(self, loops: Sequence[tuple[str, Callable[[], Awaitable[object]]]]) -> None:
        self._loops = tuple(loops)
        self._runner: asyncio.Task | None = None
        self._ready = asyncio.Event()  # both groups are open
        self._stop = asyncio.Event()
        self._closes: asyncio.TaskGroup | None = None
        self._work: asyncio.TaskGroup | None = None

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the runner ended."""
        return self._runner is not None and not self._runner.done()

    async def start(self) -> None:
        """Open the groups and start the loops (once; later calls return at once)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="pool")
        if not self._ready.is_set():
            await self._ready.wait()

    def spawn(self, start: Callable[[], Awaitable[object]], what: str) -> None:
        """Run ``start()`` in the work group (cancelled at shutdown). After :meth:`start`."""
        self._work.create_task(_guarded(start, what), name=f"pool {what}")

    def spawn_close(self, start: Callable[[], Awaitable[object]], what: str) -> bool:
        """Run ``start()`` in the close group; False if no task can run any more."""
        if self._closes is None or not self.is_running:
            return False
        task = _guarded(start, what)
        try:
            self._closes.create_task(task, name=f"pool {what}")
        except RuntimeError:  # the group is being cut (the drain timed out)
            task.close()
            return False
        return True

    async def aclose(self, timeout: float) -> None:
        """Cancel the work, wait up to ``timeout`` s for the closes, then cut them."""
        self._stop.set()
        self._ready.set()  # nobody waits for a start that will not come
        runner = self._runner
        if runner is not None and not runner.done():
            done, _ = await asyncio.wait([runner], timeout=timeout)
            if not done:
                runner.cancel()
                await asyncio.wait([runner], timeout=0.5)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as closes:
            self._closes = closes
            work = closes.create_task(self._run_work(), name="pool work")
            await self._stop.wait()
            work.cancel()

    async def _run_work(self) -> None:
        async with asyncio.TaskGroup() as work:
            self._work = work
            for what, start in self._loops:
                work.create_task(_guarded(start, what), name=f"pool {what}")
            self._ready.set()
            await asyncio.get_running_loop().create_future()  # until shutdown cancels the work
