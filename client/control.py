"""The daemon's control socket: one JSON request line in, one JSON reply line out.

``status`` is open to every local user (the socket is world-connectable and the reply
never holds a secret); ``stop`` needs the caller to be root, checked with SO_PEERCRED.
The daemon serves the socket from its own threads, not from the event loop: during a
bulk transfer the loop is busy for milliseconds at a time, and ``status`` must not wait
for its turn. The client side is plain blocking sockets so ``atlantic status`` answers
in milliseconds without starting an event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

MAX_REQUEST = 4096
READ_TIMEOUT_S = 5.0
WORKERS = 4  # clients answered at once; more wait in the listen backlog
LISTEN_BACKLOG = 64
Handler = Callable[[dict], dict]


class ControlError(Exception):
    """The daemon could not be asked (not running, or it answered nonsense)."""


class BadRequest(Exception):
    """The client sent something that is not one JSON request line."""


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _read_line(conn: socket.socket) -> bytes:
    """The request line (without its newline), read within READ_TIMEOUT_S in all."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))  # 0 would mean non-blocking
        chunk = conn.recv(MAX_REQUEST + 1)  # TimeoutError once the deadline has passed
        if not chunk:
            break
        data += chunk
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request longer than {MAX_REQUEST} bytes")
    return line


class ControlServer:
    """Serve ``{"cmd": name, ...}`` requests on ``path`` with ``handlers[name]``.

    A few worker threads each block in ``accept()`` and answer one client at a time, so
    a client that sends nothing holds up one worker, not the others. Handlers run on the
    workers: they may read the daemon's objects and hand work to its loop with
    ``call_soon_threadsafe`` or ``run_coroutine_threadsafe``, and call no other asyncio API.
    """

    def __init__(self, path: Path, handlers: dict[str, Handler], privileged: set[str]):
        self.path = path
        self.handlers = handlers
        self.privileged = privileged
        self._listener: socket.socket | None = None
        self._workers: list[threading.Thread] = []
        self._open: set[socket.socket] = set()  # connections being answered, for close() to cut short
        self._lock = threading.Lock()  # guards _open and _closing
        self._closing = False

    def start(self) -> None:
        """Listen on ``path`` (connectable by every local user) and start answering."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o666)
            listener.listen(LISTEN_BACKLOG)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._workers = [threading.Thread(target=self._serve_forever, name=f"atlantic-control-{i}", daemon=True)
                         for i in range(WORKERS)]
        for worker in self._workers:
            worker.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, cut short requests still being read, and join the workers (bounded).

        Only the reading side is shut, so a reply being written (to ``stop``, say) still goes out.

        Blocking: from the event loop, call it with ``asyncio.to_thread``.
        """
        if self._listener is None:
            return
        with self._lock:
            self._closing = True
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes every blocked accept()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0))
        self._listener.close()
        self._listener = None

    def _serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.1)  # out of file descriptors, say: try again shortly
                continue
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._open.add(conn)
            try:
                conn.sendall(json.dumps(self._reply(conn)).encode() + b"\n")
            except OSError:
                pass  # the client went away
            finally:
                with self._lock:
                    self._open.discard(conn)
                    conn.close()

    def _reply(self, conn: socket.socket) -> dict:
        try:
            request = json.loads(_read_line(conn))
        except TimeoutError:
            return {"error": f"bad request: no request line within {READ_TIMEOUT_S:g} s"}
        except BadRequest as exc:
            return {"error": f"bad request: {exc}"}
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return {"error": 'bad request: send one JSON object on one line, like {"cmd": "status"}'}
        cmd = request.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"error": f"unknown command {cmd!r}"}
        if cmd in self.privileged and _peer_uid(conn) != 0:
            return {"error": f"`{cmd}` needs root: run it with sudo"}
        try:
            return handler(request)
        except Exception as exc:  # noqa: BLE001 - the client gets one line, the daemon goes on
            return {"error": f"`{cmd}` failed: {str(exc) or type(exc).__name__}"}


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
