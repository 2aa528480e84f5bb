"""The pool's background tasks: idle expiry, proxy URL refresh, warm CONNECT connections.

Async adapter; each loop sleeps between bounded steps and is cancelled by ``aclose``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from atlantic.pool.errors import UpstreamError
from atlantic.pool.upstream import UpstreamKind
from atlantic.pool.http11 import H1Connection

if TYPE_CHECKING:
    from atlantic.pool.pool import UpstreamPool

__all__ = ["expire_loop", "refresh_loop", "warm_loop"]


async def expire_loop(pool: UpstreamPool) -> None:
    """Close idle connections past the idle timeout, or closed by the peer; prune warm ones."""
    while True:
        now = pool.clock()
        for rec in pool.plan.expire(now):
            pool._drop(rec)
        for rec, conn in list(pool._conns.items()):  # idle keep-alive closed by the peer
            if isinstance(conn, H1Connection) and rec.is_idle() and conn.is_peer_closed():
                pool._drop(rec)
        pool.warm.prune(now, keep_key=pool.proxy.current.key)
        nxt = pool.plan.next_expiry()
        await asyncio.sleep(min(5.0, max(0.05, (nxt - now) if nxt else 5.0)))


async def refresh_loop(pool: UpstreamPool) -> None:
    """Re-render the proxy URL snapshot every 30 s and when the sticky session runs out."""
    while True:
        await asyncio.sleep(pool.proxy.seconds_until_refresh(pool.clock()) or 0.05)
        if pool.proxy.refresh(pool.clock()):
            pool._warm_wanted.set()  # a new session: warm connections for the new key


async def warm_loop(pool: UpstreamPool) -> None:
    """Keep ``warm.size`` connections ready for CONNECT to an HTTP/1.1 proxy (while tunnels are used)."""
    while True:
        await pool._warm_wanted.wait()
        pool._warm_wanted.clear()
        snap = pool.proxy.current
        if (snap.upstream.is_direct or pool.warm.size == 0 or snap.key in pool.plan.h2_keys
                or pool.clock() - pool._last_tunnel > pool.plan.idle_timeout):
            continue
        if snap.upstream.kind is UpstreamKind.HTTPS and snap.key not in pool._h1_keys:
            continue  # h2 proxies carry tunnels as streams; nothing to keep warm
        for _ in range(pool.warm.missing(snap.key)):
            try:
                t = await pool._open(snap.key, snap)
            except UpstreamError:
                await asyncio.sleep(1.0)  # proxy unreachable: try again on the next tunnel
                break
            pool.warm.put(snap.key, t)
