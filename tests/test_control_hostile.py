"""The control socket under a hostile local user (issue 14): silent connections cannot
starve root, other users run only read-only commands and see no secrets, garbage cannot
kill a worker; `down` and `up` never kill a live daemon because its socket was busy."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from atlantic.client import control, lifecycle
from atlantic.client.config import Config, DaemonConfig
from atlantic.client.control import ControlServer, request
from atlantic.client.state import StatePaths, write_state

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as another user")
NOBODY = 65534

REPORT = {
    "state": "up", "pid": 42, "version": "0.1.0", "tun": "atl0", "ipv6": "captured", "udp_policy": "drop",
    "upstream": "http://customer-alice-sessid-7:***@gw.example.net:7777", "flows_total": 3,
    "flow_kinds": {"http": 2, "tls": 1},
    "last_error": {"message": "CONNECT secret-site.example:443 refused by the upstream", "count": 2, "age_s": 1.5},
    "pool": {"requests": 5, "upstreams": [{"name": "http://customer-alice@gw.example.net:7777", "requests": 5}]},
}


@pytest.fixture
def state_dir():
    """A short directory other users can traverse (unix socket paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="atl-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_nobody(script: str, *args: str, **kw) -> subprocess.Popen:
    """Run a Python ``script`` as uid/gid 65534 (no groups), pipes on stdin/stdout."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-c", textwrap.dedent(script), *args]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def nobody_request(path: Path, cmd: str) -> dict:
    """One request sent as uid 65534; its reply."""
    proc = as_nobody("""
        import json, sys
        from pathlib import Path
        from atlantic.client.control import request
        print(json.dumps(request(Path(sys.argv[1]), sys.argv[2], timeout=10)))
    """, str(path), cmd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


SILENT_CLIENTS = """
    import socket, sys
    socks = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.readline()
    held = 0
    for s in socks:  # still open = no reply and no EOF yet
        s.setblocking(False)
        try:
            s.recv(1)  # an error line or EOF: the server let go of it
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    print(held, flush=True)
    sys.stdin.readline()
"""


@needs_root
def test_forty_silent_clients_of_another_user_cannot_delay_root(state_dir, monkeypatch):
    """40 idle connections from uid 65534: root's status and stop are answered while they
    are held, and that user holds at most MAX_PER_UID of them (the rest are closed at once)."""
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 60.0)  # the silent ones stay held throughout
    stopped = []
    server = ControlServer(state_dir / "c.sock", {
        "status": lambda _req: {"state": "up"},
        "stop": lambda _req: stopped.append(True) or {"state": "stopping"},
    }, {"stop"})
    server.start()
    hostile = as_nobody(SILENT_CLIENTS, str(server.path), "40")
    try:
        assert hostile.stdout.readline().strip() == "ready", hostile.stderr.read()
        assert request(server.path, "status", timeout=2.0) == {"state": "up"}
        assert request(server.path, "stop", timeout=2.0) == {"state": "stopping"} and stopped
        hostile.stdin.write("count\n")
        hostile.stdin.flush()
        assert int(hostile.stdout.readline()) == control.MAX_PER_UID
        assert server.open_by_uid() == {NOBODY: control.MAX_PER_UID}
    finally:
        hostile.kill()
        hostile.wait(10)
        server.close()


@needs_root
def test_other_users_run_only_read_only_commands(state_dir):
    """A non-root peer may ask `status`; `stop` and any other command need root."""
    server = ControlServer(state_dir / "c.sock", {
        "status": lambda _req: {"state": "up"}, "stop": lambda _req: {"state": "stopping"},
        "reload": lambda _req: {"reloaded": True},
    }, public=control.PUBLIC_COMMANDS)
    server.start()
    try:
        assert nobody_request(server.path, "status") == {"state": "up"}
        for cmd in ("stop", "reload"):
            assert nobody_request(server.path, cmd) == {"error": f"`{cmd}` needs root: run it with sudo"}
        assert request(server.path, "reload") == {"reloaded": True}
    finally:
        server.close()


@needs_root
def test_other_users_get_a_status_without_secrets(state_dir):
    """Over a real socket: uid 65534 sees no proxy user name and no flow destination; root sees all."""
    server = ControlServer(state_dir / "c.sock", {"status": lambda _req: REPORT}, {"stop"})
    server.start()
    try:
        theirs = nobody_request(server.path, "status")
        assert request(server.path, "status") == REPORT
    finally:
        server.close()
    text = json.dumps(theirs)
    assert "alice" not in text and "secret-site" not in text
    assert theirs["upstream"] == "http://gw.example.net:7777"
    assert theirs["flows_total"] == 3 and theirs["last_error"]["count"] == 2


def test_redaction_keeps_numbers_and_plain_words():
    """The non-root view: numbers, booleans and a few plain words stay; other strings are hidden."""
    seen = control.redact_for_others({**REPORT, "by_host": {"secret-site.example": 1}})
    assert seen["state"] == "up" and seen["tun"] == "atl0" and seen["flow_kinds"] == {"http": 2, "tls": 1}
    assert seen["last_error"]["message"] == control.HIDDEN
    assert seen["pool"]["upstreams"] == [{"name": control.HIDDEN, "requests": 5}]
    assert seen["by_host"] == {}
    assert control.redact_for_others({"upstream": "direct"}) == {"upstream": "direct"}


def test_the_daemon_opens_only_status_to_other_users(tmp_path):
    """The daemon's control server lets non-root peers run `status` and nothing else."""
    from atlantic.client.daemon import Daemon

    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=tmp_path)), ["direct"])
    assert daemon.control_server().public == frozenset({"status"})


def raw_request(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        return s.makefile("rb").readline()


def test_deeply_nested_requests_do_not_kill_the_workers(state_dir):
    """`[[[[...` past the JSON parser's recursion limit is a one-line error, and the socket keeps answering."""
    server = ControlServer(state_dir / "c.sock", {"status": lambda _req: {"state": "up"}}, set())
    server.start()
    try:
        for _ in range(6):  # more than there were workers
            reply = raw_request(server.path, b"[" * 4000 + b"\n")
            assert json.loads(reply)["error"].startswith("bad request")
        assert request(server.path, "status") == {"state": "up"}
    finally:
        server.close()


def test_status_says_timeout_apart_from_not_running(state_dir):
    """A socket that takes the request but never answers is a ControlTimeout, a missing one is not."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(state_dir / "busy.sock"))
    listener.listen(8)  # never accepted: a busy daemon
    try:
        with pytest.raises(control.ControlTimeout):
            request(state_dir / "busy.sock", "status", timeout=0.3)
    finally:
        listener.close()
    with pytest.raises(control.ControlError) as info:
        request(state_dir / "none.sock", "status")
    assert not isinstance(info.value, control.ControlTimeout)


FAKE_DAEMON = """
import os, signal, socket, sys, time
sock_path, marker = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(sock_path), exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sock_path)
s.listen(64)  # never accepted: a control socket too busy to answer

def drain(*_):
    time.sleep(0.2)  # the drain: flows closed, fake-IP map saved, routing restored
    with open(marker, "w") as f:
        f.write("drained")
    os._exit(0)

signal.signal(signal.SIGTERM, drain)
if sys.argv[3] != "-":  # where to write the pid
    with open(sys.argv[3], "w") as f:
        f.write(str(os.getpid()))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_down_drains_a_daemon_whose_socket_does_not_answer(state_dir, monkeypatch):
    """`down` with a busy control socket asks with SIGTERM (the daemon drains and saves), never SIGKILL."""
    monkeypatch.setattr(lifecycle, "STOP_TIMEOUT_S", 5.0)
    monkeypatch.setattr(lifecycle, "STOP_REQUEST_TIMEOUT_S", 0.5, raising=False)
    cfg = Config(daemon=DaemonConfig(state_dir=state_dir))
    paths = StatePaths.for_namespace(state_dir)
    script = state_dir / "fake_daemon.py"
    script.write_text(FAKE_DAEMON)
    marker = state_dir / "drained"
    daemon = subprocess.Popen([sys.executable, str(script), str(paths.control_socket), str(marker),
                               "-", "atlantic", "--foreground"], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline().strip() == "ready"
        write_state(paths, {"pid": daemon.pid})
        message = lifecycle.stop(cfg)
        assert daemon.wait(10) == 0  # exited by itself, not -SIGKILL
        assert marker.read_text() == "drained"
        assert message == "Atlantic is down; routing is as it was before."
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_up_leaves_a_running_daemon_whose_socket_does_not_answer(state_dir, monkeypatch):
    """`up` whose new daemon runs but never answers status in time leaves it running and says so in one line."""
    monkeypatch.setattr(lifecycle, "START_TIMEOUT_S", 3.0)
    paths = StatePaths.for_namespace(state_dir)
    script = state_dir / "fake_daemon.py"
    script.write_text(FAKE_DAEMON)
    pidfile = state_dir / "pid"
    fake = state_dir / "fake-python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {script} {paths.control_socket} "
                    f"{state_dir / 'drained'} {pidfile}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    pid = None
    try:
        with pytest.raises(lifecycle.LifecycleError) as info:
            lifecycle.start_background(Config(daemon=DaemonConfig(state_dir=state_dir)), None)
        pid = int(pidfile.read_text())
        assert "left running" in str(info.value) and "\n" not in str(info.value)
        os.kill(pid, 0)  # still alive
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        if pid is None and pidfile.exists():
            pid = int(pidfile.read_text())
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


@needs_root
def test_with_the_atlantic_group_only_its_members_may_ask(state_dir, monkeypatch):
    """When the socket group exists the socket is root:<group> 0660: a member asks status, any
    other user is told in one line how to join (here the group is nogroup, gid 65534)."""
    monkeypatch.setattr(control, "SOCKET_GROUP", "nogroup")
    server = ControlServer(state_dir / "c.sock", {"status": lambda _req: {"state": "up"}}, public=control.PUBLIC_COMMANDS)
    server.start()
    try:
        st = os.stat(server.path)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, NOBODY)
        assert nobody_request(server.path, "status") == {"state": "up"}  # gid 65534: a member
        proc = subprocess.run(
            ["setpriv", "--reuid=1", "--regid=1", "--clear-groups", sys.executable, "-c",
             "import sys; from pathlib import Path; from atlantic.client.control import request, ControlError\n"
             "try:\n    request(Path(sys.argv[1]), 'status', timeout=5)\nexcept ControlError as e:\n    print(e)",
             str(server.path)], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip().startswith("not allowed to ask the daemon: join the atlantic group"), proc
    finally:
        server.close()
    monkeypatch.setattr(control, "SOCKET_GROUP", "no-such-group-here")
    assert control.socket_access() == (0o666, None)  # no group on this machine: everyone may ask
