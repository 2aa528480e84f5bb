"""Config loading and validation: good files, every kind of bad file, the password file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atlantic.client.config import (
    Config,
    ConfigError,
    check_config_file,
    load_config,
    parse_config,
    upstream_url_with_secret,
)

GOOD = """
[upstream]
url = "http://customer-alice@gw.example.net:7777"
connect_timeout_s = 5

[tun]
name = "atl1"
address = "198.18.4.1/30"
mtu = 9000
offload = false

[routing]
table = 3000
fwmark = 0x3000
rule_priority = 20000

[daemon]
state_dir = "/run/atl-test"
log_level = "debug"
idle_timeout_s = 60
"""


def keys(problems) -> list[str]:
    return [p.key for p in problems]


def test_empty_file_gives_defaults():
    """An empty file means direct upstream and the default device and routing."""
    cfg, problems = parse_config("")
    assert problems == []
    assert cfg.upstream.url == "direct"
    assert cfg.tun == Config().tun
    assert cfg.routing.table == 2026


def test_good_file_is_typed():
    """Every section and key of a good file lands typed in the Config."""
    cfg, problems = parse_config(GOOD, "good.toml")
    assert problems == []
    assert cfg.upstream.url.startswith("http://customer-alice@")
    assert cfg.upstream.connect_timeout_s == 5.0
    assert (cfg.tun.name, cfg.tun.mtu, cfg.tun.offload) == ("atl1", 9000, False)
    assert (cfg.routing.table, cfg.routing.fwmark, cfg.routing.rule_priority) == (3000, 0x3000, 20000)
    assert cfg.daemon.state_dir == Path("/run/atl-test")
    assert cfg.source == "good.toml"


def test_every_problem_is_reported_with_its_key():
    """A file with many mistakes reports each one, naming the key and what is expected."""
    text = """
[upstream]
url = "socks9://x"
bogus = 1
[tun]
mtu = 100
offload = "yes"
address = "198.18.0.1/32"
[routing]
table = 254
fwmark = true
[daemon]
log_level = "loud"
state_dir = "relative/dir"
[extra]
"""
    _, problems = parse_config(text)
    assert sorted(keys(problems)) == sorted([
        "extra", "upstream.bogus", "upstream.url", "tun.address", "tun.mtu", "tun.offload",
        "routing.table", "routing.fwmark", "daemon.state_dir", "daemon.log_level",
    ])
    for p in problems:
        assert "\n" not in str(p)
        assert p.message


def test_mtu_problem_says_the_range():
    """A number out of range says the accepted range and the value given."""
    _, problems = parse_config("[tun]\nmtu = 70000\n")
    assert str(problems[0]) == "tun.mtu: expected an integer from 1280 to 65535, got 70000"


def test_invalid_toml_is_one_problem():
    """A file that is not TOML at all gives one clear problem, not a traceback."""
    _, problems = parse_config("[upstream\nurl=")
    assert len(problems) == 1 and problems[0].key == "(file)"
    assert "not valid TOML" in problems[0].message


def test_section_that_is_not_a_table():
    """`upstream = 3` is reported as a key that should be a table."""
    _, problems = parse_config("upstream = 3\n")
    assert keys(problems) == ["upstream"]


def test_load_config_env_and_explicit(tmp_path, monkeypatch):
    """ATLANTIC_CONFIG names the file; --config overrides it; a named file must exist."""
    f = tmp_path / "a.toml"
    f.write_text('[upstream]\nurl = "http://u:p@127.0.0.1:3128"\n')
    f.chmod(0o600)  # an inline password is refused in a file others can read (issue 14)
    monkeypatch.setenv("ATLANTIC_CONFIG", str(f))
    assert load_config().upstream.url == "http://u:p@127.0.0.1:3128"
    g = tmp_path / "b.toml"
    g.write_text("")
    assert load_config(g).upstream.url == "direct"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_load_config_error_names_file_and_count(tmp_path):
    """The error of a bad file is one line: the file, the first problem, how many more."""
    f = tmp_path / "bad.toml"
    f.write_text("[tun]\nmtu = 1\nname = ''\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    line = str(info.value)
    assert "\n" not in line and str(f) in line and "1 more" in line


def test_cli_flag_overrides_file():
    """with_upstream replaces only the URL."""
    cfg, _ = parse_config(GOOD)
    assert cfg.with_upstream("direct").upstream.url == "direct"
    assert cfg.with_upstream("direct").tun == cfg.tun


def test_password_file_world_readable_is_refused(tmp_path):
    """A password file anyone can read is refused with the chmod to fix it."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    f = tmp_path / "c.toml"
    f.write_text(f'[upstream]\nurl = "http://alice@127.0.0.1:3128"\npassword_file = "{pw}"\n')
    _, problems = check_config_file(f, True)
    assert keys(problems) == ["upstream.password_file"]
    assert "chmod 600" in problems[0].message


def test_password_file_fills_the_url(tmp_path):
    """A private password file supplies the password, percent-encoded into the URL."""
    pw = tmp_path / "pw"
    pw.write_text("p@ss:word/1\n")
    os.chmod(pw, 0o600)
    f = tmp_path / "c.toml"
    f.write_text(f'[upstream]\nurl = "http://alice@127.0.0.1:3128"\npassword_file = "{pw}"\n')
    cfg = load_config(f)
    assert upstream_url_with_secret(cfg) == "http://alice:p%40ss%3Aword%2F1@127.0.0.1:3128"


def test_empty_password_file_is_refused(tmp_path):
    """An empty password file is a problem, not an empty password."""
    pw = tmp_path / "pw"
    pw.write_text("")
    os.chmod(pw, 0o600)
    f = tmp_path / "c.toml"
    f.write_text(f'[upstream]\nurl = "http://alice@127.0.0.1:3128"\npassword_file = "{pw}"\n')
    _, problems = check_config_file(f, True)
    assert "is empty" in problems[0].message


def test_capture_and_pool_sections():
    """[capture] and [pool] settings are typed; bad list items and choices name the key."""
    cfg, problems = parse_config(
        '[capture]\nipv6 = "block"\nudp = "reject"\nlan = ["192.168.1.7/24"]\nports = [80, 443]\n'
        'other_ports = "reject"\nallow_interfaces = ["docker0"]\n[pool]\nwarm_tunnels = 0\n'
    )
    assert problems == []
    assert cfg.capture.ipv6 == "block" and cfg.capture.lan == ("192.168.1.0/24",)
    assert cfg.capture.ports == (80, 443) and cfg.pool.warm_tunnels == 0
    _, problems = parse_config('[capture]\nipv6 = "leak"\nlan = ["not-a-net"]\nports = [0]\n')
    assert sorted(keys(problems)) == ["capture.ipv6", "capture.lan", "capture.ports"]


def test_username_template_is_checked():
    """A username template with an unknown field is refused with the fields it may use."""
    _, problems = parse_config(
        '[upstream]\nurl = "http://alice:pw@10.0.0.1:3128"\nusername_template = "customer-{user}-zip-{zip}"\n')
    assert keys(problems) == ["upstream.username_template"]
    assert "{country}" in problems[0].message


def test_lockdown_is_off_by_default_and_needs_the_kill_switch():
    """capture.lockdown defaults to false; true without the kill switch is one problem naming both keys."""
    cfg, problems = parse_config("")
    assert cfg.capture.lockdown is False and not problems
    cfg, problems = parse_config("[capture]\nlockdown = true\n")
    assert cfg.capture.lockdown is True and not problems
    cfg, problems = parse_config("[capture]\nlockdown = true\nkill_switch = false\n")
    assert cfg.capture.lockdown is False
    assert [p.key for p in problems] == ["capture.lockdown"] and "kill_switch" in problems[0].message
