"""Several upstreams, the [health] section, the daemon's limits and metrics, and how the
daemon's outbound side is built from them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from atlantic.client import outbound
from atlantic.client.config import Config, HealthSettings, parse_config
from atlantic.client.config_check import check_config_file, upstream_urls_with_secret
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstream import parse_upstream
from atlantic.pool.upstreams import UpstreamSet

TWO = """
[[upstream]]
url = "http://customer-acme@gw1.example.net:7777"
username_template = "customer-{user}-cc-{country}-sessid-{session}"
country = "de"
session_minutes = 10

[[upstream]]
url = "https://customer-acme@gw2.example.net:8443"
country = "us"
"""


def keys(problems) -> list[str]:
    return [p.key for p in problems]


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_one_upstream_table_is_one_upstream():
    """[upstream] keeps working exactly as before: one upstream, no standbys."""
    cfg, problems = parse_config('[upstream]\nurl = "http://u@gw.example.net:1"\n')
    assert problems == [] and cfg.standbys == () and len(cfg.upstreams) == 1
    assert cfg.upstream.key == "upstream"


def test_a_list_of_upstreams_in_priority_order():
    """[[upstream]] tables are upstreams in the order written, each with its own settings."""
    cfg, problems = parse_config(TWO)
    assert problems == []
    assert [u.url for u in cfg.upstreams] == ["http://customer-acme@gw1.example.net:7777",
                                              "https://customer-acme@gw2.example.net:8443"]
    assert [u.country for u in cfg.upstreams] == ["de", "us"]
    assert cfg.upstreams[0].session_minutes == 10 and cfg.upstreams[1].username_template is None
    assert [u.key for u in cfg.upstreams] == ["upstream[1]", "upstream[2]"]


def test_problems_name_the_upstream_they_are_in():
    """A bad key in the second upstream is reported as upstream[2].key."""
    _, problems = parse_config(TWO + 'session_minutes = 0\ncolour = "red"\n')
    assert sorted(keys(problems)) == ["upstream[2].colour", "upstream[2].session_minutes"]


@pytest.mark.parametrize("text, why", [
    ("upstream = []\n", "one or more"),
    ("upstream = [1, 2]\n", "one or more"),
    ("upstream = 3\n", "one or more"),
    ('[[upstream]]\nurl = "http://u@a.example:1"\n[[upstream]]\nurl = "direct"\n', "reveal"),
    ("".join('[[upstream]]\nurl = "http://u@a.example:1"\n' for _ in range(9)), "at most 8"),
])
def test_bad_upstream_lists_are_one_line_each(text, why):
    """An empty or mistyped list, direct among several, or too many: one problem that says so."""
    _, problems = parse_config(text)
    assert keys(problems) == ["upstream"] and why in problems[0].message


def test_each_password_file_is_read_and_checked(tmp_path):
    """Each upstream's password file fills its own URL; a bad one is named by its key."""
    pw1 = private(tmp_path / "pw1", "first/secret\n")
    pw2 = private(tmp_path / "pw2", "second\n")
    conf = private(tmp_path / "a.toml", TWO.replace('country = "de"', f'country = "de"\npassword_file = "{pw1}"')
                   .replace('country = "us"', f'country = "us"\npassword_file = "{pw2}"'))
    cfg, problems = check_config_file(conf, True)
    assert problems == []
    assert upstream_urls_with_secret(cfg) == ["http://customer-acme:first%2Fsecret@gw1.example.net:7777",
                                              "https://customer-acme:second@gw2.example.net:8443"]
    os.chmod(pw2, 0o644)
    _, problems = check_config_file(conf, True)
    assert keys(problems) == ["upstream[2].password_file"] and "second" not in str(problems[0])


def test_an_inline_password_in_a_readable_file_is_refused_for_any_upstream(tmp_path):
    """The readable-config rule holds for every upstream of the list, not just the first."""
    conf = tmp_path / "a.toml"
    conf.write_text(TWO.replace("https://customer-acme@", "https://customer-acme:pw@"))
    os.chmod(conf, 0o644)
    _, problems = check_config_file(conf, True)
    assert keys(problems) == ["upstream[2].url"]


def test_command_line_urls_keep_the_configured_settings_by_position():
    """--upstream given twice over a two-upstream config changes where, not how."""
    cfg, _ = parse_config(TWO)
    new = cfg.with_upstreams(["http://u@10.0.0.1:1", "http://u@10.0.0.2:2", "http://u@10.0.0.3:3"])
    assert [u.url for u in new.upstreams] == ["http://u@10.0.0.1:1", "http://u@10.0.0.2:2", "http://u@10.0.0.3:3"]
    assert [u.country for u in new.upstreams] == ["de", "us", None]
    assert new.upstreams[2].key == "upstream[3]"
    assert cfg.with_upstream("direct").upstreams == (cfg.upstream.__class__(url="direct", key="upstream[1]",
                                                      username_template=cfg.upstream.username_template,
                                                      country="de", session_minutes=10),)


def test_health_section_is_typed_and_checked():
    """[health] lands typed; bad URLs and numbers are named one per line; echo_url "" turns it off."""
    cfg, problems = parse_config('[health]\nprobe_url = "https://origin.test/small"\nexpected_status = 200\n'
                                 'echo_url = ""\nactive_interval_s = 2\nfailback_hold_s = 0\n')
    assert problems == []
    assert cfg.health == HealthSettings(probe_url="https://origin.test/small", expected_status=200, echo_url=None,
                                        active_interval_s=2.0, failback_hold_s=0.0)
    _, problems = parse_config('[health]\nprobe_url = "ftp://x/"\necho_url = "https://origin.test/ip"\n'
                               'expected_status = 99\nfail_threshold = 0\nprobe_url2 = 1\n')
    assert keys(problems) == ["health.probe_url", "health.echo_url", "health.expected_status",
                              "health.fail_threshold", "health.probe_url2"]
    _, problems = parse_config('[health]\nprobe_url = "http://user:pw@origin.test/"\n')
    assert keys(problems) == ["health.probe_url"] and "pw" not in problems[0].message


def test_daemon_limits_and_metrics():
    """The flow cap, open-files target, head deadline and metrics address are settable and checked."""
    cfg, problems = parse_config('[daemon]\nmax_flows = 500\nmax_open_files = 4096\nhead_timeout_s = 10\n'
                                 'metrics = "127.0.0.1:9477"\n')
    assert problems == []
    assert (cfg.daemon.max_flows, cfg.daemon.max_open_files, cfg.daemon.head_timeout_s,
            cfg.daemon.metrics) == (500, 4096, 10.0, "127.0.0.1:9477")
    _, problems = parse_config('[daemon]\nmax_flows = -1\nmax_open_files = 10\nhead_timeout_s = 0\n'
                               'metrics = "localhost:9477"\n')
    assert keys(problems) == ["daemon.head_timeout_s", "daemon.max_flows", "daemon.max_open_files",
                              "daemon.metrics"]


def test_outbound_for_proxies_is_a_monitored_set():
    """Proxies: one pool each behind an UpstreamSet, its signals going to the monitor; the
    monitor's probe TLS only for the https:// one; every proxy's address pinned."""
    cfg, _ = parse_config(TWO)
    urls = ["http://customer-acme:a@gw1.example.net:7777", "https://customer-acme:b@gw2.example.net:8443"]
    ups = [parse_upstream(u) for u in urls]
    pinned = {"gw1.example.net": "10.9.0.1", "gw2.example.net": "10.9.0.2"}
    out = outbound.build(cfg, urls, ups, pinned)
    assert isinstance(out.pool, UpstreamSet) and len(out.pools) == 2
    assert all(isinstance(p, UpstreamPool) for p in out.pools)
    assert out.pool.names == ("http://customer-acme:***@gw1.example.net:7777",
                              "https://customer-acme:***@gw2.example.net:8443")
    assert out.pool.on_signal == out.monitor.signal
    assert out.monitor.tls[0] is None and out.monitor.tls[1] is not None
    assert out.monitor.machine.config.expected_countries == ("de", "us")
    assert out.leaks.target.address == "10.9.0.1" and out.leaks.target.port == 7777
    assert "b@" not in repr(out.monitor.status())


def test_outbound_for_direct_has_no_monitor():
    """Direct: nothing to fail over to or probe; the leak detector still runs."""
    out = outbound.build(Config(), ["direct"], [parse_upstream("direct")], {})
    assert out.monitor is None and isinstance(out.pool, UpstreamPool)
    assert out.status()["health"] is None and "blocked_packets" in out.status()["leaks"]


def test_resolve_pins_addresses_once_per_host():
    """Literal addresses pin to themselves; a name shared by two upstreams is looked up once."""
    ups = [parse_upstream("http://u@127.0.0.1:1"), parse_upstream("http://u@localhost:2"),
           parse_upstream("http://u@localhost:3")]
    assert outbound.resolve(ups) == {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1"}


def test_supervised_task_restarts_after_a_failure(monkeypatch, caplog):
    """A watcher that raises is logged in one line and started again; cancel ends it."""
    monkeypatch.setattr(outbound, "RESTART_DELAY_S", 0.01)
    runs = []

    async def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise ExceptionGroup("unhandled errors in a TaskGroup", [KeyError("boom")])
        if len(runs) == 2:
            raise KeyError("boom")
        await asyncio.sleep(3600)

    async def main():
        task = asyncio.create_task(outbound.supervised("watcher", flaky))
        for _ in range(200):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(runs) == 3
    lines = [r.getMessage() for r in caplog.records if "watcher failed" in r.getMessage()]
    assert len(lines) == 1 and "KeyError" in lines[0]


def test_the_monitor_can_be_turned_off_for_a_single_upstream_only():
    """[health] enabled = false: one proxy's pool serves flows by itself; with standbys it is refused."""
    cfg, problems = parse_config('[upstream]\nurl = "http://u@gw.example.net:1"\n[health]\nenabled = false\n')
    assert problems == [] and not cfg.health.enabled
    out = outbound.build(cfg, ["http://u:p@gw.example.net:1"], [parse_upstream("http://u:p@gw.example.net:1")],
                         {"gw.example.net": "10.9.0.1"})
    assert out.monitor is None and isinstance(out.pool, UpstreamPool)
    _, problems = parse_config(TWO + "[health]\nenabled = false\n")
    assert keys(problems) == ["health.enabled"]
