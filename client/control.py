"""The daemon's control socket: one JSON request line in, one JSON reply line out.

``status`` is open to every local user (the socket is world-connectable and the reply
never holds a secret); ``stop`` needs the caller to be root, checked with SO_PEERCRED.
The client side is plain blocking sockets so ``atlantic status`` answers in milliseconds
without starting an event loop.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

MAX_REQUEST = 4096
Handler = Callable[[dict], Awaitable[dict] | dict]


class ControlError(Exception):
    """The daemon could not be asked (not running, or it answered nonsense)."""


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


async def serve_control(path: Path, handlers: dict[str, Handler], privileged: set[str]):
    """Listen on ``path``; each request ``{"cmd": name, ...}`` goes to ``handlers[name]``."""
    import asyncio  # here, not at the top: `atlantic status` imports this module and must start fast

    async def on_client(reader, writer) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            request = json.loads(line[:MAX_REQUEST] or b"{}")
            cmd = request.get("cmd") if isinstance(request, dict) else None
            handler = handlers.get(cmd)
            if handler is None:
                reply: dict = {"error": f"unknown command {cmd!r}"}
            elif cmd in privileged and _peer_uid(writer.get_extra_info("socket")) != 0:
                reply = {"error": f"`{cmd}` needs root: run it with sudo"}
            else:
                result = handler(request)
                reply = await result if asyncio.iscoroutine(result) else result
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        path.unlink()
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(on_client, path=str(path))
    os.chmod(path, 0o666)
    return server


def request(path: Path, cmd: str, timeout: float = 2.0, **args) -> dict:
    """Send one command to the daemon at ``path`` and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError("the daemon is not running") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the daemon at {path}: {exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"the daemon at {path} sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the daemon at {path} sent an unreadable reply")
    return reply
