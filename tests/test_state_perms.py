"""The state directory is private (issue 14): the namespace's directory 0700, its files
0600 even when they were left looser, no symbolic link followed; a corrupted fake-IP
map is one warning and a fresh map, never a failed start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from atlantic.client import state
from atlantic.client.config import Config, DaemonConfig
from atlantic.client.state import StatePaths

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def paths():
    """StatePaths under a fresh top directory (as /run/atlantic would be)."""
    top = Path(tempfile.mkdtemp(prefix="atl-state-"))
    top.chmod(0o755)
    yield StatePaths.for_namespace(top / "state")
    shutil.rmtree(top)


def test_a_new_state_dir_is_private(paths):
    """Created 0700 (the top directory 0755, for the sockets); the state file 0600."""
    state.write_state(paths, {"pid": 1})
    assert mode(paths.dir) == 0o700 and mode(paths.dir.parent) == 0o755
    assert mode(paths.state_file) == 0o600
    assert state.read_state(paths) == {"pid": 1}


def test_loose_leftovers_are_made_private(paths):
    """A directory 0755 with daemon.log and fakeip.json 0644 from an older version becomes 0700 / 0600."""
    paths.dir.mkdir(parents=True)
    paths.dir.chmod(0o755)
    for f in (paths.log_file, paths.fakeip_file, paths.state_file):
        f.write_text("{}")
        f.chmod(0o644)
    state.ensure_state_dir(paths)
    assert mode(paths.dir) == 0o700
    assert [mode(f) for f in (paths.log_file, paths.fakeip_file, paths.state_file)] == [0o600] * 3


def test_the_log_is_private_also_when_it_existed(paths):
    """The daemon log the background daemon writes to is 0600, a looser existing one is tightened."""
    paths.dir.mkdir(parents=True)
    paths.log_file.write_text("old line\n")
    paths.log_file.chmod(0o644)
    fd = state.open_log(paths)
    os.write(fd, b"new line\n")
    os.close(fd)
    assert mode(paths.log_file) == 0o600
    assert paths.log_file.read_text() == "old line\nnew line\n"


def test_a_planted_symlink_is_removed_not_followed(paths, tmp_path):
    """A link left in the directory (daemon.log -> some file) is removed; its target keeps its mode."""
    victim = tmp_path / "victim"
    victim.write_text("x")
    victim.chmod(0o644)
    paths.dir.mkdir(parents=True)
    paths.log_file.symlink_to(victim)
    state.ensure_state_dir(paths)
    assert not paths.log_file.exists() and mode(victim) == 0o644
    fd = state.open_log(paths)
    os.close(fd)
    assert victim.read_text() == "x" and mode(paths.log_file) == 0o600


@needs_root
def test_a_namespace_dir_of_another_user_is_refused(paths):
    """A namespace directory someone else made is refused in one line saying to remove it."""
    paths.dir.mkdir(parents=True)
    os.chown(paths.dir, 65534, 65534)
    with pytest.raises(state.StateDirError) as info:
        state.ensure_state_dir(paths)
    assert "remove it" in str(info.value) and "\n" not in str(info.value)


def test_a_world_writable_top_dir_is_refused(paths):
    """A state_dir others may write (they could swap the socket or the directory) is refused."""
    paths.dir.parent.mkdir()
    paths.dir.parent.chmod(0o777)
    with pytest.raises(state.StateDirError, match="daemon.state_dir: .* writable by other users"):
        state.ensure_state_dir(paths)


def test_the_control_socket_sits_beside_the_private_dir(paths):
    """Other users reach the socket (for status) though they cannot enter the 0700 directory."""
    assert paths.control_socket.parent == paths.dir.parent
    assert paths.control_socket.name == f"{paths.dir.name}.sock"


def test_the_daemon_runs_with_a_private_umask(monkeypatch, paths):
    """`up --foreground` sets umask 077 before the daemon runs: whatever it writes is root's alone."""
    from atlantic.client import daemon, lifecycle

    seen = []
    monkeypatch.setattr(daemon, "run_daemon", lambda cfg, url: seen.append(os.umask(0o022)))
    old = os.umask(0o022)
    try:
        lifecycle.run_foreground(Config(daemon=DaemonConfig(state_dir=paths.dir.parent)))
    finally:
        os.umask(old)
    assert seen == [0o077]


CORRUPT = [b"{", b"\xff\xfe", b"[" * 100000, b'{"version": 2, "v4": "198.18.128.0/17", "v4_entries": 7}', b'"just a string"']


@pytest.mark.parametrize("data", CORRUPT)
def test_a_corrupted_fakeip_map_is_one_warning_and_a_fresh_map(paths, data, caplog):
    """The bad file is moved aside (0600) with one warning line; the daemon gets an empty map."""
    paths.dir.mkdir(parents=True)
    paths.fakeip_file.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="atlantic"):
        pool = state.load_fakeip(paths.fakeip_file, time.monotonic())
    assert pool.snapshot(time.monotonic()).to_json().get("v4_entries") == []
    bad = paths.fakeip_file.with_name("fakeip.json.bad")
    assert bad.read_bytes() == data and mode(bad) == 0o600 and not paths.fakeip_file.exists()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "corrupted" in lines[0] and "\n" not in lines[0]


def test_a_good_or_missing_fakeip_map_gives_no_warning(paths, caplog):
    """A saved map loads with its names; no file at all is a fresh map; neither warns."""
    from atlantic.dns import fakeip

    paths.dir.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="atlantic"):
        assert state.load_fakeip(paths.fakeip_file, 0.0).snapshot(0.0).to_json()["v4_entries"] == []
        pool = fakeip.FakeIpPool()
        ip = pool.assign("example.com", 4, 0.0)
        fakeip.save(pool, paths.fakeip_file, 0.0)
        again = state.load_fakeip(paths.fakeip_file, 0.0)
    assert again.lookup(ip) == "example.com"
    assert caplog.records == []


def test_the_daemon_starts_dns_with_a_corrupted_map(paths):
    """Where the daemon loads the map (its DNS set-up), a corrupted file means a fresh map, moved aside."""
    from atlantic.client.daemon import Daemon

    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=paths.dir.parent)), ["direct"])
    daemon.paths.dir.mkdir(parents=True, exist_ok=True)
    daemon.paths.fakeip_file.write_text('{"version": 2, "v4": "198.18.128.0/17", "v4_entries": [[1, 2]]}')

    async def make():
        return daemon._make_dns()

    asyncio.run(make())
    assert json.loads(daemon.paths.fakeip_file.with_name("fakeip.json.bad").read_text())["version"] == 2
    assert daemon.fake_pool is not None
