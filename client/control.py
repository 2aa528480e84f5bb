"""The daemon's control socket: one JSON request line in, one JSON reply line out.

Who may do what is decided in one place (``SOCKET_GROUP``, ``PUBLIC_COMMANDS``,
``may_run``, ``redact_for_others``): every local user may connect and ask ``status``,
and gets a report without the proxy user name or flow destinations; every other command
(``stop``, ...) needs root, checked with SO_PEERCRED.

No local user can starve root (issue 14). One thread reads every request line at once,
non-blocking and within ``READ_TIMEOUT_S``, so a silent client costs a file descriptor,
never a worker; one non-root user holds at most ``MAX_PER_UID`` connections (more are
closed at once); a complete request goes to one of two workers, one reserved for root,
so no number of other users' requests delays root's ``status`` or ``stop``.

The daemon serves the socket from these threads, not from the event loop: during a bulk
transfer the loop is busy for milliseconds at a time, and ``status`` must not wait for
its turn. Root's ``status`` is answered by the reader itself (a ``quick`` handler: it
never blocks, and may decline, leaving the request to the worker): under saturating
transfers every hand-over between threads waits for the GIL, and the reader reading the
request as it accepts and answering at once leaves the fewest. The client side is plain
blocking sockets so ``atlantic status`` answers in milliseconds without starting an event
loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# `atlantic status` imports this module for ``request``: what only the server needs
# (grp, queue, selectors, socket, struct, threading; dataclasses alone is ~10 ms) is
# imported where the server uses it.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import queue
    import selectors
    import socket

MAX_REQUEST = 4096
READ_TIMEOUT_S = 1.0  # for the whole request line: a real client sends it at once
WRITE_TIMEOUT_S = 2.0
MAX_PER_UID = 8  # connections one non-root user may hold open at once
MAX_OTHERS = 64  # all non-root connections together: bounds the file descriptors they cost
LISTEN_BACKLOG = 64
# The reader and root's worker run at this nice value (needs root; else left as they are):
# under saturating transfers the two cores are shared with the relay, the proxy's and the
# applications' processes, and a thread waking for `status` should not queue behind them
# for a scheduler slice. Other users' worker keeps the default, so no local user's
# requests get more CPU than the data path.
CONTROL_NICE = -10
ROOT_UID = 0
PUBLIC_COMMANDS = frozenset({"status"})  # read-only: what a non-root peer may ask
# Who may connect: when this system group exists (the Debian package creates it), root and
# its members (root:atlantic, mode 0660); on a machine without it, every local user.
SOCKET_GROUP: str | None = "atlantic"
HIDDEN = "(hidden: run as root to see it)"
Handler = Callable[[dict], dict]


class ControlError(Exception):
    """The daemon could not be asked (not running, or it answered nonsense)."""


class ControlTimeout(ControlError):
    """The daemon's socket took the request but no reply came in time (busy, or stopping)."""


class BadRequest(Exception):
    """The client sent something that is not one JSON request line."""


def socket_access() -> tuple[int, int | None]:
    """The control socket's mode and group (None: leave it root's): who may connect at all."""
    if SOCKET_GROUP is None:
        return 0o666, None
    import grp

    try:
        return 0o660, grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:  # no such group here: everyone may ask status (answers are redacted)
        return 0o666, None


def _favoured(run: Callable[..., None], *args) -> None:
    """Run ``run(*args)`` in this thread at ``CONTROL_NICE`` (only this thread: Linux
    scheduling priority is per thread); without the privilege, at the default."""
    import threading

    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CONTROL_NICE)
    run(*args)


def may_run(uid: int, cmd: str, public: Iterable[str]) -> bool:
    """Root may run every command; other users only the read-only ones in ``public``."""
    return uid == ROOT_UID or cmd in public


_PUBLIC_WORDS = frozenset({"state", "version", "tun", "ipv6", "udp_policy"})
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def redact_for_others(report: dict) -> dict:
    """What a non-root peer sees of a reply: numbers, booleans and a few plain words.

    The upstream keeps its scheme, host and port but loses its user name (providers put
    the customer and session in it); every other string (``last_error`` messages, which
    name flow destinations, upstream names, ...) is replaced by ``HIDDEN``, and a dict
    entry whose key is not a plain word (a host name, say) is left out.
    """
    return _redact(report, "")


def _redact(value, key: str):
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items() if isinstance(k, str) and _PLAIN_KEY.match(k)}
    if isinstance(value, (list, tuple)):
        return [_redact(v, key) for v in value]
    if isinstance(value, str):
        if key in ("upstream", "url"):
            return _USERINFO.sub("", value)
        return value if key in _PUBLIC_WORDS else HIDDEN
    return value if value is None or isinstance(value, (bool, int, float)) else HIDDEN


def _peer_uid(sock: socket.socket) -> int:
    import socket
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _request_line(data: bytes) -> bytes:
    """The request line (without its newline) of what was read; BadRequest if too long."""
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request longer than {MAX_REQUEST} bytes")
    return line


class _Conn:
    """One accepted connection: its peer, what it sent so far, and when reading gives up."""

    __slots__ = ("data", "deadline", "error", "sock", "uid", "unsent")

    def __init__(self, sock: socket.socket, uid: int, deadline: float) -> None:
        self.sock = sock
        self.uid = uid
        self.deadline = deadline
        self.data = b""
        self.error: str | None = None  # set instead of a request when reading failed
        self.unsent = b""  # a reply the reader built but could not send at once


class ControlServer:
    """Serve ``{"cmd": name, ...}`` requests on ``path`` with ``handlers[name]``.

    Non-root peers may run only ``public`` commands (default: every handler not in
    ``privileged``; the daemon passes ``PUBLIC_COMMANDS``), and see handler replies
    through ``redact`` (default ``redact_for_others``). Handlers run on the two workers:
    they may read the daemon's objects and hand work to its loop with
    ``call_soon_threadsafe`` or ``run_coroutine_threadsafe``, and call no other asyncio API.

    ``quick[name]`` answers root's ``name`` on the reader thread: it must never block, and
    returns None to leave the request to ``handlers[name]`` on root's worker.
    """

    def __init__(self, path: Path, handlers: dict[str, Handler], privileged: Iterable[str] = (), *,
                 public: Iterable[str] | None = None,
                 redact: Callable[[dict], dict] | None = redact_for_others,
                 quick: dict[str, Callable[[dict], dict | None]] | None = None):
        import queue
        import threading

        self.path = path
        self.handlers = handlers
        self.public = frozenset(public) if public is not None else frozenset(handlers) - frozenset(privileged)
        self.redact = redact
        self.quick = dict(quick or {})
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._root_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._other_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _per_uid and _closing
        self._per_uid: dict[int, int] = {}  # open non-root connections by uid
        self._reading = 0
        self._closing = False

    def __repr__(self) -> str:
        with self._lock:
            per_uid = dict(self._per_uid)
        return (f"<ControlServer reading={self._reading} root_queued={self._root_jobs.qsize()} "
                f"others_queued={self._other_jobs.qsize()} per_uid={per_uid}>")

    def open_by_uid(self) -> dict[int, int]:
        """Open non-root connections per uid (for tests and status)."""
        with self._lock:
            return dict(self._per_uid)

    def start(self) -> None:
        """Listen on ``path`` (see ``socket_access``) and start answering."""
        import socket
        import threading

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            mode, gid = socket_access()
            if gid is not None:
                os.chown(self.path, ROOT_UID, gid)
            os.chmod(self.path, mode)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._threads = [
            threading.Thread(target=_favoured, args=(self._read_forever,), name="atlantic-control-read",
                             daemon=True),
            threading.Thread(target=_favoured, args=(self._work_forever, self._root_jobs),
                             name="atlantic-control-root", daemon=True),
            threading.Thread(target=self._work_forever, args=(self._other_jobs,), name="atlantic-control-users",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, answer requests still being read with an error, join the threads (bounded).

        A request already read is still answered (the reply to ``stop``, say).

        Blocking: from the event loop, call it with ``asyncio.to_thread``.
        """
        import threading

        if self._listener is None:
            return
        with self._lock:
            self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0))
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._listener = None

    # ---- the reader: accepts and reads every connection, never blocks ----

    def _read_forever(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        reading: dict[socket.socket, _Conn] = {}
        try:
            while not self._closing:
                now = time.monotonic()
                wait = min((c.deadline for c in reading.values()), default=now + 1.0) - now
                for key, _ in sel.select(max(wait, 0.0)):
                    if key.fileobj is self._listener:
                        self._accept_all(sel, reading)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._read_some(sel, reading, reading[key.fileobj])
                now = time.monotonic()
                for conn in [c for c in reading.values() if c.deadline <= now]:
                    conn.error = f"bad request: no request line within {READ_TIMEOUT_S:g} s"
                    self._finish_reading(sel, reading, conn)
            for conn in list(reading.values()):
                conn.error = "bad request: the daemon is stopping; no request line was read"
                self._finish_reading(sel, reading, conn)
        finally:
            sel.close()
            self._root_jobs.put(None)
            self._other_jobs.put(None)

    def _accept_all(self, sel: selectors.BaseSelector, reading: dict) -> None:
        import selectors

        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of file descriptors, say: the next wake-up tries again
            try:
                uid = _peer_uid(sock)
            except OSError:
                sock.close()
                continue
            if uid != ROOT_UID and not self._admit(uid):
                _send_now(sock, {"error": f"too many connections from uid {uid}; close some and try again"})
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, uid, time.monotonic() + READ_TIMEOUT_S)
            # A client sends its line as it connects: read it before registering, so the
            # common request costs no epoll_ctl (each system call here releases the GIL,
            # and taking it back from a busy loop can take a switch interval or more).
            if self._read_some(sel, reading, conn):
                continue
            reading[sock] = conn
            self._reading = len(reading)
            sel.register(sock, selectors.EVENT_READ, None)

    def _admit(self, uid: int) -> bool:
        with self._lock:
            held = self._per_uid.get(uid, 0)
            if held >= MAX_PER_UID or sum(self._per_uid.values()) >= MAX_OTHERS:
                return False
            self._per_uid[uid] = held + 1
            return True

    def _release(self, uid: int) -> None:
        if uid == ROOT_UID:
            return
        with self._lock:
            left = self._per_uid.get(uid, 1) - 1
            if left > 0:
                self._per_uid[uid] = left
            else:
                self._per_uid.pop(uid, None)

    def _read_some(self, sel: selectors.BaseSelector, reading: dict, conn: _Conn) -> bool:
        """Read what ``conn`` has sent; True once its request is complete (and handed on)."""
        try:
            chunk = conn.sock.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        conn.data += chunk
        if not chunk or b"\n" in conn.data or len(conn.data) > MAX_REQUEST:
            self._finish_reading(sel, reading, conn)
            return True
        return False

    def _finish_reading(self, sel: selectors.BaseSelector, reading: dict, conn: _Conn) -> None:
        if reading.pop(conn.sock, None) is not None:  # registered: it did not come whole at once
            sel.unregister(conn.sock)
            self._reading = len(reading)
        if conn.uid == ROOT_UID and self.quick and self._answer_now(conn):
            return
        (self._root_jobs if conn.uid == ROOT_UID else self._other_jobs).put(conn)

    def _answer_now(self, conn: _Conn) -> bool:
        """Root's request answered here by a ``quick`` handler; False leaves it to the worker.
        A reply the socket does not take at once goes to the worker to finish sending."""
        reply = self._reply(conn, quick=True)
        if reply is None:
            return False
        data = json.dumps(reply).encode() + b"\n"
        try:
            sent = conn.sock.send(data)  # non-blocking: a new socket's buffer takes a report
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client went away
            sent = len(data)
        if sent < len(data):
            conn.unsent = data[sent:]
            return False
        conn.sock.close()
        return True

    # ---- the workers: one for root, one for everyone else ----

    def _work_forever(self, jobs: queue.SimpleQueue) -> None:
        while (conn := jobs.get()) is not None:
            try:
                data = conn.unsent or json.dumps(self._reply(conn)).encode() + b"\n"
                conn.sock.settimeout(WRITE_TIMEOUT_S)
                conn.sock.sendall(data)
            except Exception:  # noqa: BLE001 - the client went away, or a reply would not encode
                pass
            finally:
                conn.sock.close()
                self._release(conn.uid)

    def _reply(self, conn: _Conn, quick: bool = False) -> dict | None:
        """The reply to ``conn``'s request; with ``quick``, None unless a quick handler gave one."""
        if conn.error is not None:
            return {"error": conn.error}
        try:
            request = json.loads(_request_line(conn.data))
        except BadRequest as exc:
            return {"error": f"bad request: {exc}"}
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's limit
            request = None
        if not isinstance(request, dict):
            return {"error": 'bad request: send one JSON object on one line, like {"cmd": "status"}'}
        cmd = request.get("cmd")
        handler = (self.quick if quick else self.handlers).get(cmd) if isinstance(cmd, str) else None
        if quick and handler is None:
            return None
        if handler is None:
            shown = repr(cmd)
            return {"error": f"unknown command {shown if len(shown) <= 80 else shown[:77] + '...'}"}
        if not may_run(conn.uid, cmd, self.public):
            return {"error": f"`{cmd}` needs root: run it with sudo"}
        try:
            reply = handler(request)
            if reply is None and quick:
                return None
        except Exception as exc:  # noqa: BLE001 - the client gets one line, the daemon goes on
            detail = (str(exc) or type(exc).__name__) if conn.uid == ROOT_UID else type(exc).__name__
            return {"error": f"`{cmd}` failed: {detail}"}
        if conn.uid != ROOT_UID and self.redact is not None and isinstance(reply, dict):
            return self.redact(reply)
        return reply


def _send_now(sock: socket.socket, reply: dict) -> None:
    """Best effort, never blocking: a refusal the peer may read before the close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(json.dumps(reply).encode() + b"\n")


def request(path: Path, cmd: str, timeout: float = 2.0, **args) -> dict:
    """Send one command to the daemon at ``path`` and return its reply.

    Raises ControlTimeout when the socket took the request but no reply came within
    ``timeout``, ControlError when the daemon cannot be reached or answers nonsense.
    """
    # The C module, not `socket`: building socket.py's enum classes is ~4 ms of every
    # `atlantic status`, and this needs none of them.
    import _socket

    with contextlib.closing(_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)) as s:
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
                if chunk.endswith(b"\n"):
                    break  # the reply is one line: no need to wait for the server's close
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError("the daemon is not running") from None
        except PermissionError:
            raise ControlError(f"not allowed to ask the daemon: join the {SOCKET_GROUP} group "
                               f"(sudo adduser $USER {SOCKET_GROUP}, then log in again), or use sudo") from None
        except TimeoutError:
            raise ControlTimeout(f"the daemon at {path} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the daemon at {path}: {exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise ControlError(f"the daemon at {path} sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the daemon at {path} sent an unreadable reply")
    return reply


STATUS_TIMEOUT_S = 2.0


def daemon_status(paths) -> dict:
    """The daemon's status over its socket, or a ``down`` report saying why (never raises).

    ``paths``: the daemon's ``state.StatePaths``. The state file is root's alone: another
    user asks the socket directly (it answers with a report without secrets) and, when it
    does not answer, is told to ask as root. Shared by ``atlantic status``'s fast path
    (``client/main.py``) and ``lifecycle.status``.
    """
    from atlantic.client.state import is_daemon_alive, read_state

    state = read_state(paths)
    if state is None and not paths.control_socket.exists():
        return {"state": "down"}
    try:
        return request(paths.control_socket, "status", timeout=STATUS_TIMEOUT_S)
    except ControlError as exc:
        if state is None:
            return {"state": "down", "problem": f"the daemon does not answer ({exc}); `sudo atlantic status` tells more"}
        pid = int(state.get("pid", 0))
        alive = is_daemon_alive(pid)
        return {
            "state": "down",
            "pid": pid,
            "upstream": state.get("upstream"),
            "problem": (
                f"the daemon (pid {pid}) does not answer: {exc}" if alive else
                f"the daemon (pid {pid}) died; its routing is still in place (fail closed): run `sudo atlantic down`"
            ),
        }
