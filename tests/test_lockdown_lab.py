"""Lockdown (capture.lockdown) in the lab: the kill switch outlives the daemon, so a stop
(and the gap of a `systemctl restart`) never opens the machine; only `atlantic killswitch
remove` or the next `up` does. Without lockdown, `down` opens it as before."""

from __future__ import annotations

import subprocess

import pytest

from atlantic_lab import atlantic, ns_run
from conftest import LAB_HEALTH

pytestmark = pytest.mark.lab


def _table_present(lab) -> bool:
    return ns_run(lab.client_ns, ["nft", "list", "table", "inet", "atlantic"]).returncode == 0


def _curl_origin(lab) -> subprocess.CompletedProcess:
    """Straight to the origin's address (no name lookup): it works only with the machine open."""
    return ns_run(lab.client_ns, ["curl", "-sS", "--max-time", "5", "--noproxy", "*", "-o", "/dev/null",
                                  f"http://{lab.origin_ip}/small"], timeout=20)


def test_lockdown_keeps_the_machine_closed_after_down_until_killswitch_remove(lab, tmp_path):
    """up, down (twice): the table stays and a connect is refused at once; `killswitch remove` opens."""
    cfg = tmp_path / "atlantic.toml"
    cfg.touch(mode=0o600)
    cfg.write_text(f'[upstream]\nurl = "{lab.proxy_url}"\n[capture]\nlockdown = true\n{LAB_HEALTH}')
    atlantic(lab, "down")
    try:
        res = atlantic(lab, "up", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        for _ in range(2):
            res = atlantic(lab, "down", "--config", str(cfg))
            assert res.returncode == 0 and "lockdown" in res.stdout, res.stdout + res.stderr
            assert _table_present(lab)
            refused = _curl_origin(lab)
            assert refused.returncode == 7, refused.stderr  # connection refused at once, not a timeout
        res = atlantic(lab, "killswitch", "remove")
        assert res.returncode == 0, res.stderr
        assert not _table_present(lab)
        assert _curl_origin(lab).returncode == 0
    finally:
        atlantic(lab, "killswitch", "remove")
        atlantic(lab, "down")


def test_without_lockdown_down_opens_the_machine(lab, tmp_path):
    """The default: after `down` the table is gone and the origin is reachable directly."""
    cfg = tmp_path / "atlantic.toml"
    cfg.touch(mode=0o600)
    cfg.write_text(f'[upstream]\nurl = "{lab.proxy_url}"\n{LAB_HEALTH}')
    atlantic(lab, "down")
    res = atlantic(lab, "up", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    res = atlantic(lab, "down", "--config", str(cfg))
    assert res.returncode == 0 and "lockdown" not in res.stdout
    assert not _table_present(lab)
    assert _curl_origin(lab).returncode == 0
