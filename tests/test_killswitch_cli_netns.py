"""`atlantic killswitch apply|status|remove` (the early-boot kill switch) in throwaway
namespaces (root): after `apply` a TCP connect from the client namespace to its peer is
refused at once, and marked traffic to the configured proxy still gets out; `apply` twice
is the same as once; `remove` restores; `status` tells which (exit 3 when off)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from atlantic.system import killswitch
from test_leak_netns import (
    MARK,
    PEER4,
    inside,
    listen,
    tcp_connect,
    tcp_refused,
    veth_pair,
)

pytestmark = pytest.mark.lab_local  # root: namespaces and nftables

PROXY_PORT = 3128
OTHER_PORT = 8081


def atlantic(ns: str, *args: str, config=None) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "atlantic", "killswitch", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_apply_refuses_everything_but_the_proxy_and_remove_restores(tmp_path):
    """apply (twice), status, remove, status: the connect is refused only in between."""
    config = tmp_path / "atlantic.toml"
    config.write_text(f'[upstream]\nurl = "http://user@{PEER4}:{PROXY_PORT}"\n\n'
                      f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    with veth_pair() as pair:
        with inside(pair.peer):
            servers = [listen((PEER4, PROXY_PORT)), listen((PEER4, OTHER_PORT))]
        try:
            with inside(pair.client):
                tcp_connect((PEER4, OTHER_PORT)).close()  # open before
            for _ in range(2):
                r = atlantic(pair.client, "apply", config=config)
                assert r.returncode == 0, r.stderr
                assert f"{PEER4}:{PROXY_PORT}" in r.stdout
            with inside(pair.client):
                assert killswitch.is_active()
                tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
                assert tables.count("inet atlantic") == 1
                tcp_refused((PEER4, OTHER_PORT))
                tcp_refused((PEER4, PROXY_PORT))  # unmarked: refused too
                tcp_connect((PEER4, PROXY_PORT), mark=MARK).close()  # the daemon's marked socket gets out
            status = atlantic(pair.client, "status")
            assert status.returncode == 0 and status.stdout.startswith("kill switch on"), status.stdout

            r = atlantic(pair.client, "remove")
            assert r.returncode == 0 and r.stdout.strip() == "kill switch off", r.stderr
            with inside(pair.client):
                assert not killswitch.is_active()
                tcp_connect((PEER4, OTHER_PORT)).close()
            status = atlantic(pair.client, "status")
            assert status.returncode == 3 and status.stdout.strip() == "kill switch off"
            assert atlantic(pair.client, "remove").returncode == 0  # twice is fine
        finally:
            for s in servers:
                s.close()


def test_down_with_no_daemon_lifts_an_early_boot_kill_switch(tmp_path):
    """`atlantic down` restores the machine: with no daemon up, a kill switch left by
    `killswitch apply` is removed and the connect works again; with none, nothing happens."""
    config = tmp_path / "atlantic.toml"
    config.write_text(f'[upstream]\nurl = "http://user@{PEER4}:{PROXY_PORT}"\n\n'
                      f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    down = ["ip", "netns", "exec", None, sys.executable, "-m", "atlantic", "down", "--config", str(config)]
    with veth_pair() as pair:
        down[3] = pair.client
        with inside(pair.peer):
            server = listen((PEER4, OTHER_PORT))
        try:
            assert atlantic(pair.client, "apply", config=config).returncode == 0
            with inside(pair.client):
                tcp_refused((PEER4, OTHER_PORT))
            r = subprocess.run(down, capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 0 and "kill switch" in r.stdout and "open again" in r.stdout, r.stdout + r.stderr
            with inside(pair.client):
                assert not killswitch.is_active()
                tcp_connect((PEER4, OTHER_PORT)).close()
            r = subprocess.run(down, capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 0 and r.stdout.strip() == "Atlantic is not up; nothing to restore.", r.stdout
        finally:
            server.close()
