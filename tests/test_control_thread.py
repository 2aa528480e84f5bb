"""The control socket served from its own threads: answers while the event loop is busy,
hands ``stop`` to the loop, refuses bad requests in one line, and closes cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from atlantic.client import control
from atlantic.client.config import Config, DaemonConfig
from atlantic.client.control import ControlServer, request
from atlantic.client.daemon import Daemon


@pytest.fixture
def state_dir():
    """A short, world-traversable directory (unix socket paths are short; uid 65534 connects)."""
    path = Path(tempfile.mkdtemp(prefix="atl-ctl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


class FakeDispatcher:
    """Counters the way the real dispatcher keeps them: ints and dicts the loop changes."""

    def __init__(self):
        self.flows_total = 0
        self.kinds: dict[str, int] = {}
        self.errors: dict[str, float] = {}
        self.calls: list[threading.Thread] = []

    def counters(self) -> dict:
        self.calls.append(threading.current_thread())
        last = max(self.errors.items(), key=lambda kv: kv[1]) if self.errors else None
        return {"flows_total": self.flows_total, "flow_kinds": dict(self.kinds), "last_error": last}


def make_daemon(state_dir: Path, dispatcher=None) -> Daemon:
    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=state_dir)), ["direct"])
    daemon.paths.dir.mkdir(parents=True, exist_ok=True)
    daemon.paths.dir.chmod(0o755)
    daemon.dispatcher = dispatcher or FakeDispatcher()
    return daemon


async def serving(daemon: Daemon) -> ControlServer:
    """The daemon's control server, started on the running loop as ``Daemon.run`` does."""
    daemon.loop = asyncio.get_running_loop()
    server = daemon.control_server()
    server.start()
    return server


def run(coro, limit: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, limit))


def raw_request(path: Path, data: bytes) -> dict:
    """Send ``data`` as is and read the one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        reply = s.makefile("rb").readline()
    assert reply.endswith(b"\n")
    return json.loads(reply)


def test_status_answers_while_the_event_loop_is_blocked(state_dir):
    """A status request made while the loop thread sits in a blocking call is answered
    during that call: the call waits for the reply and would time out if status needed the loop."""
    daemon = make_daemon(state_dir)
    answered = threading.Event()
    reply: dict = {}

    def ask():
        reply.update(request(daemon.paths.control_socket, "status"))
        answered.set()

    async def go():
        server = await serving(daemon)
        client = threading.Thread(target=ask)
        client.start()
        # Blocks the loop thread: nothing on the loop can run until the reply is in.
        got_reply_while_blocked = answered.wait(10)
        await asyncio.to_thread(client.join, 10)
        await asyncio.to_thread(server.close)
        return got_reply_while_blocked

    assert run(go()) is True
    assert reply["state"] == "starting"
    assert reply["report_ms"] >= 0


def test_status_sees_a_counter_the_loop_just_changed(state_dir):
    """Read-after-write: status reads the live counters, so a change on the loop shows at once."""
    daemon = make_daemon(state_dir)

    async def go():
        server = await serving(daemon)
        seen = []
        for n in range(1, 4):
            daemon.dispatcher.flows_total = n
            daemon.dispatcher.kinds["http"] = n
            seen.append(await asyncio.to_thread(request, daemon.paths.control_socket, "status"))
        await asyncio.to_thread(server.close)
        return seen

    seen = run(go())
    assert [(r["flows_total"], r["flow_kinds"]) for r in seen] == [(n, {"http": n}) for n in (1, 2, 3)]


def test_stop_from_the_control_thread_wakes_the_loop(state_dir):
    """`stop` (as root) is handed to the loop thread-safely: the reply says stopping and the loop's event fires."""
    if os.geteuid() != 0:
        pytest.skip("stop needs root")
    daemon = make_daemon(state_dir)

    async def go():
        server = await serving(daemon)
        reply = await asyncio.to_thread(request, daemon.paths.control_socket, "stop")
        await asyncio.wait_for(daemon.stopping.wait(), 5)
        after = await asyncio.to_thread(request, daemon.paths.control_socket, "status")
        await asyncio.to_thread(server.close)
        return reply, after

    reply, after = run(go())
    assert reply == {"state": "stopping", "pid": os.getpid()}
    assert after["state"] == "stopping"


def test_stop_is_refused_for_other_users(state_dir):
    """A non-root caller gets a one-line refusal and the daemon keeps running."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    daemon = make_daemon(state_dir)

    async def go():
        server = await serving(daemon)
        reply = await asyncio.to_thread(_as_nobody, daemon.paths.control_socket, "stop")
        await asyncio.to_thread(server.close)
        return reply

    assert run(go()) == {"error": "`stop` needs root: run it with sudo"}
    assert not daemon.stop_requested and not daemon.stopping.is_set()


@pytest.fixture
def echo_server(state_dir):
    """A ControlServer with plain handlers (no loop) on a socket in ``state_dir``."""
    server = ControlServer(state_dir / "c.sock", {"echo": lambda req: {"echo": req.get("text")},
                                                  "boom": lambda req: 1 / 0}, privileged=set())
    server.start()
    yield server
    server.close()


def test_socket_is_world_connectable(echo_server):
    """Anyone may ask for status: the socket is mode 0666."""
    assert echo_server.path.stat().st_mode & 0o777 == 0o666


@pytest.mark.parametrize(("data", "error"), [
    (b'{"cmd": "frobnicate"}\n', "unknown command 'frobnicate'"),
    (b"{nope\n", 'bad request: send one JSON object on one line, like {"cmd": "status"}'),
    (b"[1, 2]\n", 'bad request: send one JSON object on one line, like {"cmd": "status"}'),
    (b"\xff\xfe\n", 'bad request: send one JSON object on one line, like {"cmd": "status"}'),
    (b'{"cmd": ["echo"]}\n', "unknown command ['echo']"),
    (b"x" * (control.MAX_REQUEST + 10), f"bad request: request longer than {control.MAX_REQUEST} bytes"),
    (b'{"cmd": "boom"}\n', "`boom` failed: division by zero"),
])
def test_bad_requests_get_one_line_errors(echo_server, data, error):
    """Unknown commands, malformed JSON, oversize lines and failing handlers each get one JSON error line."""
    assert raw_request(echo_server.path, data) == {"error": error}


def test_request_without_newline_is_read_to_eof(echo_server):
    """A request line cut short by the client's EOF is still answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(echo_server.path))
        s.sendall(b'{"cmd": "echo", "text": "hi"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(s.makefile("rb").readline()) == {"echo": "hi"}


def test_a_silent_client_holds_up_no_one_and_times_out(state_dir, monkeypatch):
    """While one client sends nothing, others are answered; the silent one gets an error at the read timeout."""
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.5)
    server = ControlServer(state_dir / "c.sock", {"echo": lambda req: {"echo": req.get("text")}}, set())
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.settimeout(10)
            silent.connect(str(server.path))
            assert request(server.path, "echo", text="meanwhile") == {"echo": "meanwhile"}
            assert json.loads(silent.makefile("rb").readline()) == {
                "error": "bad request: no request line within 0.5 s"}
    finally:
        server.close()


def test_close_joins_every_thread_and_frees_every_fd(state_dir):
    """close() cuts short a client still sending, joins the workers and closes the listener: no leaked threads or fds."""
    threads_before = set(threading.enumerate())
    fds_before = len(os.listdir("/proc/self/fd"))
    server = ControlServer(state_dir / "c.sock", {"echo": lambda req: {}}, set())
    server.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(10)
        silent.connect(str(server.path))
        assert request(server.path, "echo") == {}  # a worker has surely picked up `silent` by now
        server.close()
        reply = silent.makefile("rb").readlines()  # answered at once, not after the read timeout
    assert [json.loads(line)["error"].startswith("bad request") for line in reply] == [True]
    assert set(threading.enumerate()) == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_reply_being_written_survives_close(state_dir):
    """A request already read is still answered when close() runs meanwhile (the reply to `stop`)."""
    def stop(_req):
        closer = threading.Thread(target=server.close)
        closer.start()
        time.sleep(0.2)  # close() runs while this handler is still working
        return {"state": "stopping"}

    server = ControlServer(state_dir / "c.sock", {"stop": stop}, set())
    server.start()
    assert request(server.path, "stop", timeout=10) == {"state": "stopping"}


def ask_status(daemon: Daemon) -> dict:
    """Serve the daemon's control socket on a running loop; ask `status` from another thread."""
    async def go():
        server = await serving(daemon)
        reply = await asyncio.to_thread(request, daemon.paths.control_socket, "status")
        await asyncio.to_thread(server.close)
        return reply

    return run(go())


def test_status_retries_when_a_dict_changes_under_it(state_dir):
    """A "changed size during iteration" while copying counters is retried on the control thread."""
    daemon = make_daemon(state_dir)
    real = daemon.dispatcher.counters
    failures = iter([RuntimeError("dictionary changed size during iteration")] * 2)

    def flaky():
        if (exc := next(failures, None)) is not None:
            raise exc
        return real()

    daemon.dispatcher.counters = flaky

    assert ask_status(daemon)["flows_total"] == 0
    assert daemon.dispatcher.calls[0] is not threading.main_thread()


def test_status_falls_back_to_the_loop_when_retries_keep_failing(state_dir):
    """If every try off the loop fails, the report is built on the loop instead, and still answered."""
    daemon = make_daemon(state_dir)
    real = daemon.dispatcher.counters

    def only_on_the_loop():
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("dictionary changed size during iteration")
        return real()

    daemon.dispatcher.counters = only_on_the_loop

    assert ask_status(daemon)["flows_total"] == 0
    assert daemon.dispatcher.calls == [threading.main_thread()]


@pytest.fixture
def fast_thread_switching():
    """Threads switch every 10 µs, so a copy on one thread is often cut by a change on another."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def test_status_holds_up_while_the_loop_mutates_its_dicts(state_dir, fast_thread_switching):
    """Many status requests while the loop keeps adding and removing dict keys: every one is answered."""
    daemon = make_daemon(state_dir)
    d = daemon.dispatcher

    async def churn(stop: asyncio.Event):
        i = 0
        while not stop.is_set():
            # Long stretches between yields: the switch interval takes the GIL from the loop
            # (yielding very often would starve the control thread of it instead).
            for _ in range(20_000):
                i += 1
                d.kinds[f"k{i}"] = i
                d.errors[f"e{i}"] = i
                d.kinds.pop(f"k{i - 1000}", None)
                d.errors.pop(f"e{i - 1000}", None)
            await asyncio.sleep(0)

    def ask_many():
        return [request(daemon.paths.control_socket, "status", timeout=30) for _ in range(200)]

    async def go():
        server = await serving(daemon)
        stop = asyncio.Event()
        churner = asyncio.create_task(churn(stop))
        replies = await asyncio.to_thread(ask_many)
        stop.set()
        await churner
        await asyncio.to_thread(server.close)
        return replies

    replies = run(go(), limit=60)
    assert [r for r in replies if "error" in r] == []
    assert all(r["state"] == "starting" for r in replies)


def _nice(tid: int) -> int:
    """A thread's nice value, from /proc (field 19 of its stat line)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a thread's priority needs root")
def test_the_reader_and_roots_worker_run_favoured_and_other_users_worker_does_not(state_dir):
    """As root: the reader and root's worker at CONTROL_NICE, other users' worker (and the
    calling thread, standing in for the event loop) at the default."""
    server = ControlServer(state_dir / "c.sock", {"echo": lambda req: {}}, set())
    server.start()
    try:
        assert request(server.path, "echo") == {}
        nice = {t.name: _nice(t.native_id) for t in server._threads}
    finally:
        server.close()
    assert nice == {"atlantic-control-read": control.CONTROL_NICE, "atlantic-control-root": control.CONTROL_NICE,
                    "atlantic-control-users": 0}, nice
    assert _nice(threading.get_native_id()) == 0


def _as_nobody(path: Path, cmd: str) -> dict:
    """``request(path, cmd)`` from a child running as uid 65534 (needs root)."""
    script = ("import json, sys; from pathlib import Path; from atlantic.client.control import request; "
              f"print(json.dumps(request(Path(sys.argv[1]), {cmd!r})))")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script, str(path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_roots_quick_command_is_answered_by_the_reader_and_others_go_to_their_worker(state_dir):
    """Root's status is built on the reader thread (no hand-over to a worker); another user's
    status still goes to the users' worker, so a local user's requests never occupy the reader."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    built_on: list[str] = []

    def status(_req):
        built_on.append(threading.current_thread().name)
        return {"state": "running"}

    server = ControlServer(state_dir / "c.sock", {"status": status}, public={"status"}, quick={"status": status})
    server.start()
    try:
        assert request(server.path, "status") == {"state": "running"}
        assert _as_nobody(server.path, "status") == {"state": "running"}
    finally:
        server.close()
    assert built_on == ["atlantic-control-read", "atlantic-control-users"]


def test_a_quick_handler_that_declines_leaves_the_request_to_roots_worker(state_dir):
    """A quick handler returning None (the daemon's status when every try raced the loop)
    hands the request to the regular handler on root's worker, which answers it."""
    seen: list[str] = []

    def decline(_req):
        seen.append("quick:" + threading.current_thread().name)

    def slow(_req):
        seen.append("worker:" + threading.current_thread().name)
        return {"state": "from the worker"}

    server = ControlServer(state_dir / "c.sock", {"status": slow}, quick={"status": decline})
    server.start()
    try:
        assert request(server.path, "status") == {"state": "from the worker"}
        assert raw_request(server.path, b"{nope\n")["error"].startswith("bad request")  # answered by the reader
    finally:
        server.close()
    assert seen == ["quick:atlantic-control-read", "worker:atlantic-control-root"]


def test_a_quick_reply_larger_than_the_socket_takes_at_once_arrives_whole(state_dir):
    """A reply the reader's non-blocking send cannot finish goes to root's worker, which
    sends the rest: the client reads one complete line."""
    big = "x" * (4 << 20)  # more than a unix socket's buffer
    server = ControlServer(state_dir / "c.sock", {"status": lambda _r: {"pad": big}},
                           quick={"status": lambda _r: {"pad": big}})
    server.start()
    try:
        assert request(server.path, "status", timeout=10) == {"pad": big}
    finally:
        server.close()


def test_a_request_that_comes_in_pieces_is_answered_once_its_line_is_whole(echo_server):
    """The reader answers a request sent whole without registering its socket; one that
    comes in pieces is registered and read as its pieces arrive."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(echo_server.path))
        s.sendall(b'{"cmd": "echo", ')
        time.sleep(0.2)  # the reader has read the first piece and gone back to waiting
        s.sendall(b'"text": "joined"}\n')
        reply = s.makefile("rb").readline()
    assert json.loads(reply) == {"echo": "joined"}
    assert request(echo_server.path, "echo", text="whole") == {"echo": "whole"}


def test_the_client_returns_at_the_end_of_the_reply_line_not_at_the_servers_close(state_dir):
    """``request`` reads the one reply line and returns; a server slow to close (a worker
    busy after sending) costs the client nothing."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(state_dir / "slow-close.sock"))
    listener.listen(1)
    answered = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"state": "up"}\n')
            answered.wait(30)  # the connection stays open until the client has its reply

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        assert request(state_dir / "slow-close.sock", "status", timeout=10) == {"state": "up"}
    finally:
        answered.set()
        server.join(10)
        listener.close()
