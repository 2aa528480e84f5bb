"""The `atlantic` command as a user meets it: help, version, config check, root checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ATLANTIC = [sys.executable, "-m", "atlantic"]


def run(*args: str, user: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [*ATLANTIC, *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_help_lists_every_command():
    """`atlantic --help` names the commands a new user needs, with what each does."""
    res = run("--help")
    assert res.returncode == 0
    for word in ("up", "down", "status", "lab", "config", "version", "upstream proxy"):
        assert word in res.stdout


def test_version():
    """`atlantic version` prints the package version."""
    from atlantic import __version__

    res = run("version")
    assert res.returncode == 0 and res.stdout.strip() == f"atlantic {__version__}"


def test_config_check_reports_each_problem_on_one_line(tmp_path):
    """`config check` prints one line per problem, with the file and key, and exits 1."""
    f = tmp_path / "bad.toml"
    f.write_text('[tun]\nmtu = 99\n[upstream]\nurl = "ftp://x"\n')
    res = run("config", "check", str(f))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{f}: ") for line in lines)
    assert any("tun.mtu" in line for line in lines) and any("upstream.url" in line for line in lines)
    assert "Traceback" not in res.stderr


def test_config_check_good_file_hides_password(tmp_path):
    """A good file checks OK and the summary never shows the password."""
    f = tmp_path / "good.toml"
    f.write_text('[upstream]\nurl = "http://alice:hunter2@10.1.2.3:3128"\n')
    f.chmod(0o600)  # an inline password is refused in a file others can read (issue 14)
    res = run("config", "check", str(f))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "hunter2" not in res.stdout and "alice" in res.stdout


def test_config_check_missing_named_file(tmp_path):
    """A named file that does not exist is one clear line, not a traceback."""
    res = run("config", "check", str(tmp_path / "nope.toml"))
    assert res.returncode == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_bad_config_via_env_is_one_line(tmp_path):
    """ATLANTIC_CONFIG naming a bad file makes a command fail with one line naming the file and key."""
    f = tmp_path / "bad.toml"
    f.write_text("[routing]\ntable = 254\n")
    res = run("status", env={"ATLANTIC_CONFIG": str(f)})
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "routing.table" in res.stderr


def test_bad_upstream_flag_is_one_line():
    """A malformed --upstream is refused before anything changes."""
    if os.geteuid() != 0:
        pytest.skip("up checks root first")
    res = run("up", "--upstream", "http://host-without-port", "--config", "/dev/null")
    assert res.returncode == 1 and res.stderr.startswith("atlantic: --upstream:") and res.stderr.count("\n") == 1


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
@pytest.mark.parametrize("command", ["up", "down"])
def test_only_root_may_change_state(command):
    """`up` and `down` as an ordinary user say they need root, and change nothing."""
    res = run(command, user="65534")
    assert res.returncode == 1
    assert "needs root" in res.stderr and "sudo atlantic" in res.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_status_works_for_anyone(tmp_path):
    """`atlantic status` needs no root: with nothing up it says down."""
    res = run("status", "--json", user="65534", env={"ATLANTIC_CONFIG": "/dev/null"})
    assert res.returncode == 0, res.stderr
    assert '"state": "down"' in res.stdout
