"""Relay bytes both ways between an application socket and a pool ByteStream.

Used when an HTTP/1.x flow turns into a tunnel (CONNECT from the application, an
``Upgrade`` such as WebSocket). The application's side is a plain socket, or an
:class:`~.appconn.AppConn` (TLS we terminated). Each direction moves one buffer at a time and waits for
the other side to take it, so memory per flow is two buffers. Half-close travels:
EOF from the application becomes ``write_eof()``, the end of the stream a FIN. The two
directions are tasks of one TaskGroup: one failing cancels the other.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from functools import partial

from atlantic.forwarder.appconn import AppConn
from atlantic.pool.api import ByteStream

__all__ = ["StreamRelayResult", "relay_stream"]

CHUNK = 65536  # one read from the application (a fresh buffer of this size each time)
DOWN_CHUNK = 262144  # one read from the stream: what is there, up to this (no buffer made ahead)
HALF_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class StreamRelayResult:
    """What one relay moved and why it ended."""

    bytes_up: int
    bytes_down: int
    reason: str  # "closed", "idle", or the error that ended it


async def relay_stream(
    sock: socket.socket | AppConn,
    stream: ByteStream,
    *,
    first_up: bytes = b"",
    idle_timeout: float = 300.0,
    half_close_timeout: float = HALF_CLOSE_TIMEOUT_S,
) -> StreamRelayResult:
    """Relay until both directions ended, one failed, or nothing moved for ``idle_timeout``.

    ``first_up`` (bytes the application already sent) goes to the stream first. The
    stream is always closed on return (reset if the relay did not end cleanly); the
    socket is left to the caller. Once the application has closed its side, the other
    direction gets ``half_close_timeout`` seconds to finish: an HTTP/2 proxy may not
    pass END_STREAM on (nghttpx keeps its backend tunnel open), and the origin's
    keep-alive would otherwise hold the stream, and a backend connection, for minutes.
    """
    loop = asyncio.get_running_loop()
    if isinstance(sock, socket.socket):
        recv, sendall = partial(loop.sock_recv, sock), partial(loop.sock_sendall, sock)

        async def write_eof() -> None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    else:
        recv, sendall, write_eof = sock.recv, sock.sendall, sock.write_eof
    moved = [0, 0]
    last = [loop.time()]

    async def up() -> None:
        if first_up:
            await stream.write(first_up)
            moved[0] += len(first_up)
        while True:
            data = await recv(CHUNK)
            if not data:
                await stream.write_eof()
                return
            last[0] = loop.time()
            await stream.write(data)
            moved[0] += len(data)

    async def down() -> None:
        while True:
            data = await stream.read(DOWN_CHUNK)
            if not data:
                await write_eof()
                return
            last[0] = loop.time()
            await sendall(data)
            moved[1] += len(data)

    reason = "closed"
    try:
        async with asyncio.TaskGroup() as tg:
            up_task, down_task = tg.create_task(up()), tg.create_task(down())
            reason = await _watch(loop, up_task, down_task, last, idle_timeout, half_close_timeout)
            if reason != "closed":
                raise _Stalled  # the group cancels both directions
    except* _Stalled:
        pass
    except* Exception as failed:  # one direction failed: the group cancelled the other
        exc = failed.exceptions[0]
        reason = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            await stream.aclose(reset=reason != "closed")
        except Exception:  # noqa: BLE001 - closing a broken stream must not mask the result
            pass
    return StreamRelayResult(moved[0], moved[1], reason)


class _Stalled(Exception):
    """The relay stopped for lack of progress (idle, or half-closed too long)."""


async def _watch(loop: asyncio.AbstractEventLoop, up_task: asyncio.Task, down_task: asyncio.Task,
                 last: list[float], idle_timeout: float, half_close_timeout: float) -> str:
    """Wait for both directions to end: ``"closed"``, or ``"idle"`` / ``"half-close
    timeout"`` when they stall first (``last[0]``: when a byte last moved)."""
    pending = {up_task, down_task}
    app_closed_at = None
    while pending:
        # Idle: re-arm until neither direction moved for a whole period.
        deadline = last[0] + idle_timeout
        if app_closed_at is not None:
            deadline = min(deadline, app_closed_at + half_close_timeout)
        done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                           return_when=asyncio.FIRST_COMPLETED)
        if up_task in done:
            app_closed_at = loop.time()
        if not done and loop.time() - last[0] >= idle_timeout:
            return "idle"
        if not done and app_closed_at is not None and loop.time() - app_closed_at >= half_close_timeout:
            return "half-close timeout"
    return "closed"
