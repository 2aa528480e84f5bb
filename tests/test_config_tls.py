"""The [tls] section, `up --intercept/--origin-ca`, and the tls rows of `status`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from atlantic.client.config import TlsSettings, parse_config
from atlantic.client.config_check import check_config_file
from atlantic.client.config_tls import with_tls_options
from atlantic.client.report import status_rows


def problems_of(text: str) -> list[str]:
    """Every problem ``text`` has, as the one-line strings `config check` prints."""
    return [str(p) for p in parse_config(text)[1]]


def test_nothing_is_intercepted_by_default():
    """No [tls] section: an empty list, the default CA directory, no origin CA."""
    cfg, problems = parse_config("")
    assert problems == [] and cfg.tls == TlsSettings()
    assert cfg.tls.intercept == () and str(cfg.tls.ca_dir) == "/var/lib/atlantic/ca"


def test_a_good_section_is_read():
    """Patterns are kept as written (lowercase, duplicates once); paths become Paths."""
    cfg, problems = parse_config('[tls]\nintercept = ["*.Example-Video.com", "cdn.example.net", "cdn.example.net"]\n'
                                 'ca_dir = "/srv/ca"\norigin_ca_file = "/etc/ssl/extra.pem"\n')
    assert problems == []
    assert cfg.tls.intercept == ("*.example-video.com", "cdn.example.net")
    assert (str(cfg.tls.ca_dir), str(cfg.tls.origin_ca_file)) == ("/srv/ca", "/etc/ssl/extra.pem")


@pytest.mark.parametrize("value, words", [
    ('["*"]', "every domain"), ('["10.0.0.1"]', "IP address"), ('["*.com"]', "top-level"),
    ('["a.*.example.com"]', "wildcard"), ('"example.com"', "a list of domains"), ('[1]', "expected a domain"),
])
def test_bad_intercept_entries_are_one_line_each(value, words):
    """Each unusable entry is one problem naming tls.intercept and what is wrong."""
    [problem] = problems_of(f"[tls]\nintercept = {value}\n")
    assert problem.startswith("tls.intercept: ") and words in problem and "\n" not in problem


def test_the_list_is_bounded():
    """More than 256 domains is one problem."""
    many = ", ".join(f'"d{i}.example.com"' for i in range(257))
    [problem] = problems_of(f"[tls]\nintercept = [{many}]\n")
    assert "at most 256" in problem


def test_bad_paths_and_unknown_keys():
    """Relative paths and unknown keys are problems with their keys."""
    found = problems_of('[tls]\nca_dir = "ca"\norigin_ca_file = "../x.pem"\nintercpt = []\n')
    assert [p.split(":")[0] for p in found] == ["tls.ca_dir", "tls.origin_ca_file", "tls.intercpt"]


def test_origin_ca_file_must_be_a_readable_regular_file(tmp_path):
    """`config check` (which reads secrets, as `up` does) refuses a missing file or a directory,
    one line; `status` and `down` (no secrets) do not look."""
    config = tmp_path / "atlantic.toml"
    state = tmp_path / "state"
    for target, words in ((tmp_path / "missing.pem", "No such file"), (tmp_path, "not a regular file")):
        config.write_text(f'[tls]\norigin_ca_file = "{target}"\n[daemon]\nstate_dir = "{state}"\n')
        config.chmod(0o600)
        _, problems = check_config_file(config, True)
        assert [p.key for p in problems] == ["tls.origin_ca_file"] and words in str(problems[0])
        assert check_config_file(config, True, secrets=False)[1] == []
    pem = tmp_path / "extra.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    config.write_text(f'[tls]\norigin_ca_file = "{pem}"\n[daemon]\nstate_dir = "{state}"\n')
    assert check_config_file(config, True)[1] == []


def test_command_line_options_replace_the_list_and_check_the_file(tmp_path):
    """--intercept replaces the file's list; --origin-ca must exist; either problem is one line."""
    tls, problem = with_tls_options(TlsSettings(intercept=("a.example",)), ["*.b.example", "c.example"], None)
    assert problem is None and tls.intercept == ("*.b.example", "c.example")
    _, problem = with_tls_options(TlsSettings(), ["*"], None)
    assert problem.startswith("--intercept: ") and "every domain" in problem
    _, problem = with_tls_options(TlsSettings(), None, str(tmp_path / "nope.pem"))
    assert problem.startswith("--origin-ca: ") and "\n" not in problem
    assert with_tls_options(TlsSettings(), None, None) == (TlsSettings(), None)


def test_up_with_a_list_but_no_ca_says_to_run_ca_init(tmp_path, monkeypatch, capsys):
    """`up --intercept` without a local CA stops at once with one line: run `sudo atlantic ca init`."""
    from atlantic.client import cli

    monkeypatch.setenv("ATLANTIC_CA_DIR", str(tmp_path / "ca"))
    cfg = parse_config("")[0]
    with pytest.raises(typer.Exit):
        cli._with_tls(cfg, ["*.example-video.com"], None)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "sudo atlantic ca init" in line and "*.example-video.com" in line
    assert cli._with_tls(cfg, None, None).tls.intercept == ()  # nothing listed: no CA needed


def test_config_check_prints_tls_problems_as_lines(tmp_path):
    """`atlantic config check` prints a [tls] problem as one line with file and key."""
    config = tmp_path / "bad.toml"
    config.write_text('[tls]\nintercept = ["*", "ok.example.com"]\n')
    res = subprocess.run([sys.executable, "-m", "atlantic", "config", "check", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"{config}: tls.intercept: ") and "Traceback" not in res.stderr


def test_status_shows_the_tls_block():
    """`status` shows the list, what termination did, and each name passing through with its time left."""
    report = {"state": "up", "tls": {
        "intercept": ["*.example-video.com"], "terminated": 12, "h2": 7, "handshake_failures": 2,
        "origin_connections_opened": 1, "origin_connections_reused": 11,
        "pass_through": [{"name": "app.example-video.com", "reason": "refused our certificate", "seconds_left": 3000}]}}
    rows = dict(status_rows(report))
    assert rows["tls"] == ("intercepting *.example-video.com: 12 terminated (7 h2), 2 handshakes failed; "
                           "origin connections 1 opened / 11 reused")
    assert rows["pass-through"] == "app.example-video.com (refused our certificate, 50 min left)"


def test_the_daemon_loads_the_ca_and_checks_it_covers_the_list(tmp_path, monkeypatch):
    """At start the daemon loads the CA for [tls] intercept: missing, or not covering the list, is
    one line saying to run `sudo atlantic ca init`; nothing listed needs no CA."""
    from dataclasses import replace
    from datetime import datetime, timezone

    from atlantic.client.daemon import Daemon
    from atlantic.forwarder.localca import LocalCA

    monkeypatch.setenv("ATLANTIC_CA_DIR", str(tmp_path / "ca"))
    base = parse_config(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')[0]
    assert Daemon(base, ["direct"])._load_ca() is None
    cfg = replace(base, tls=TlsSettings(intercept=("*.example-video.com", "cdn.example.net")))
    with pytest.raises(RuntimeError, match="sudo atlantic ca init"):
        Daemon(cfg, ["direct"])._load_ca()
    LocalCA.create(tmp_path / "ca", ["example-video.com"], datetime.now(timezone.utc), host="test")
    with pytest.raises(RuntimeError) as caught:
        Daemon(cfg, ["direct"])._load_ca()
    assert "not cdn.example.net" in str(caught.value) and "sudo atlantic ca init" in str(caught.value)
    LocalCA.create(tmp_path / "ca", ["*.example-video.com", "example.net"], datetime.now(timezone.utc), host="test")
    ca = Daemon(cfg, ["direct"])._load_ca()
    assert ca.permits("www.cdn.example.net") and ca.permits("a.example-video.com")
