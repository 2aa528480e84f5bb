"""Hostile and careless configuration (issue 14): every refusal is one line naming the key
and the fix; no traceback, no runaway memory, and no error ever shows the proxy password."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from atlantic.client import config as config_check  # the file checks stay importable from here
from atlantic.client.config import parse_config

ATLANTIC = [sys.executable, "-m", "atlantic"]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as another user")


def run(*args: str, user: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [*ATLANTIC, *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def keys(problems) -> list[str]:
    return [p.key for p in problems]


def check(path: Path):
    return config_check.check_config_file(path, True)


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# ---- C. hostile files ----

def test_deeply_nested_toml_is_one_problem():
    """Arrays nested past the parser's recursion limit are one `(file)` problem, not a RecursionError."""
    _, problems = parse_config("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert keys(problems) == ["(file)"] and "nested too deeply" in problems[0].message


def test_status_with_a_deeply_nested_config_is_one_line(tmp_path):
    """`atlantic status` with ATLANTIC_CONFIG naming such a file fails with one line, no traceback."""
    f = tmp_path / "deep.toml"
    f.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    res = run("status", env={"ATLANTIC_CONFIG": str(f)})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "nested too deeply" in res.stderr


@pytest.mark.parametrize("template", [
    "{user:>1000000000000}", "{user!r}", "{user!s:>99}", "{user.__class__}", "{user[0]}", "{user:{country}}",
    "{}", "x" * 300,
])
def test_username_template_takes_only_plain_fields(template):
    """Format specs, conversions, attributes, indexes, positional fields and long templates are
    refused at config time (a spec like >1000000000000 would exhaust memory when rendered)."""
    text = f'[upstream]\nurl = "http://alice@10.0.0.1:3128"\nusername_template = "{template}"\n'
    _, problems = parse_config(text)
    assert keys(problems) == ["upstream.username_template"]
    assert "\n" not in problems[0].message and len(problems[0].message) < 200


def test_plain_template_fields_still_work():
    """The provider style template with every known field is accepted."""
    _, problems = parse_config('[upstream]\nurl = "http://alice@10.0.0.1:3128"\ncountry = "us"\nsession_minutes = 10\n'
                               'username_template = "customer-{user}-cc-{country}-sessid-{session}-sesstime-{minutes}"\n')
    assert problems == []


@pytest.mark.parametrize(("key", "value"), [
    ("address", "198.18.0.1/0"), ("address", "198.18.0.1/8"), ("address", "198.18.0.1/31"),
    ("address6", "fd00:a71a::1/0"), ("address6", "fd00:a71a::1/64"),
])
def test_tun_prefix_must_be_two_addresses_wide(key, value):
    """A TUN prefix other than /30 (IPv6 /126) is refused: /0 would route everything into the TUN."""
    _, problems = parse_config(f'[tun]\n{key} = "{value}"\n')
    assert keys(problems) == [f"tun.{key}"]
    assert "must be /30" in problems[0].message or "must be /126" in problems[0].message


@pytest.mark.parametrize("name", ["é" * 10, "a" * 16, "atl 0", "atl0:1", "a/b", ".", "..", 'x"y', ""])
def test_tun_name_is_a_kernel_interface_name(name):
    """At most 15 bytes (IFNAMSIZ) of letters, digits, '.', '-', '_': 10 x 'é' is 20 bytes."""
    _, problems = parse_config(f"[tun]\nname = '{name}'\n")
    assert keys(problems) == ["tun.name"] and "15 bytes" in problems[0].message


def test_allow_interfaces_names_are_checked_too():
    """allow_interfaces takes interface names (a trailing * wildcard allowed), nothing that could break nft."""
    cfg, problems = parse_config('[capture]\nallow_interfaces = ["docker0", "br-*"]\n')
    assert problems == [] and cfg.capture.allow_interfaces == ("docker0", "br-*")
    _, problems = parse_config("[capture]\nallow_interfaces = ['a\" accept; #', \"" + "é" * 10 + "\"]\n")
    assert keys(problems) == ["capture.allow_interfaces", "capture.allow_interfaces"]


@pytest.fixture
def shared_dir():
    """A directory 0755 (other users can traverse it), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="atl-cfg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_state_dir_writable_by_others_is_refused(tmp_path):
    """state_dir = "/tmp" (world-writable) is refused, naming the key and a safe choice."""
    f = private(tmp_path / "c.toml", '[daemon]\nstate_dir = "/tmp"\n')
    _, problems = check(f)
    assert keys(problems) == ["daemon.state_dir"]
    assert "writable by other users" in problems[0].message and "/run/atlantic" in problems[0].message


@needs_root
def test_state_dir_of_another_user_is_refused(tmp_path, shared_dir):
    """A state directory (or one not yet made, under a directory) that another user owns is refused."""
    theirs = shared_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    for state_dir in (theirs, theirs / "below"):
        f = private(tmp_path / "c.toml", f'[daemon]\nstate_dir = "{state_dir}"\n')
        _, problems = check(f)
        assert keys(problems) == ["daemon.state_dir"] and "uid 65534" in problems[0].message


def test_state_dir_symlink_is_refused(tmp_path, shared_dir):
    """A state directory that is a symbolic link is refused (it could be pointed elsewhere later)."""
    (shared_dir / "real").mkdir()
    (shared_dir / "link").symlink_to(shared_dir / "real")
    f = private(tmp_path / "c.toml", f'[daemon]\nstate_dir = "{shared_dir / "link"}"\n')
    _, problems = check(f)
    assert keys(problems) == ["daemon.state_dir"] and "symbolic link" in problems[0].message


def test_huge_config_is_refused_without_reading_it_all(tmp_path):
    """/dev/zero as the config is refused after 1 MiB, one line."""
    _, problems = check(Path("/dev/zero"))
    assert keys(problems) == ["(file)"] and "larger than 1 MiB" in problems[0].message


# ---- B. the password ----

SECRET = "SECRETA/SECRETB?SECRETC#SECRETD@SECRETE"


@pytest.mark.parametrize("password", [SECRET, "SECRETA/SECRETB", "SECRETA?SECRETB", "SECRETA#SECRETB",
                                      "SECRETA@SECRETB", "SECRETA SECRETB", "SECRETA:SECRETB@"])
def test_no_error_shows_the_password(tmp_path, password):
    """A password with / ? # @ in a URL gives one line with the fix and never any part of the password."""
    url = f"http://alice:{password}@gw.example.net:7777"
    _, problems = parse_config(f'[upstream]\nurl = "{url}"\n')
    assert keys(problems) == ["upstream.url"]
    assert "SECRET" not in str(problems[0]) and "\n" not in str(problems[0])
    f = private(tmp_path / "c.toml", f'[upstream]\nurl = "{url}"\n')
    res = run("config", "check", str(f))
    assert res.returncode == 1 and "SECRET" not in res.stdout + res.stderr


def test_a_special_password_gets_the_percent_encoding_hint():
    """The refusal says how to write such a password: percent-encoded, or in password_file."""
    _, problems = parse_config(f'[upstream]\nurl = "http://alice:{SECRET}@gw.example.net:7777"\n')
    assert "%2F" in problems[0].message and "password_file" in problems[0].message


def test_upstream_flag_with_a_special_password_shows_none_of_it():
    """`up --upstream` with such a password is refused before anything starts, without the password."""
    if os.geteuid() != 0:
        pytest.skip("up checks root first")
    res = run("up", "--upstream", f"http://alice:{SECRET}@gw.example.net:7777", "--config", "/dev/null")
    assert res.returncode == 1 and res.stderr.startswith("atlantic: --upstream:")
    assert "SECRET" not in res.stdout + res.stderr


def test_percent_encoded_password_is_accepted():
    """The same password percent-encoded parses, and only the redacted URL is ever shown."""
    cfg, problems = parse_config('[upstream]\nurl = "http://alice:SECRETA%2FSECRETB%40x@gw.example.net:7777"\n')
    assert problems == [] and cfg.upstream.url.endswith("@gw.example.net:7777")


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o604, 0o644, 0o620])
def test_password_file_with_group_or_other_bits_is_refused(tmp_path, mode):
    """Any group or other permission bit on the password file is refused, with the chmod to fix it."""
    pw = private(tmp_path / "pw", "s3cret\n")
    pw.chmod(mode)
    f = private(tmp_path / "c.toml", f'[upstream]\nurl = "http://alice@10.0.0.1:3128"\npassword_file = "{pw}"\n')
    _, problems = check(f)
    assert keys(problems) == ["upstream.password_file"]
    assert f"chmod 600 {pw}" in problems[0].message and "owned by root" in problems[0].message


@needs_root
def test_password_file_of_another_user_is_refused(tmp_path):
    """A 0600 password file that another user owns (and so may rewrite) is refused."""
    pw = private(tmp_path / "pw", "s3cret\n")
    os.chown(pw, 65534, 65534)
    with pytest.raises(config_check.ConfigError) as info:
        config_check.read_password_file(pw)
    assert "uid 65534" in str(info.value) and "owned by root" in str(info.value)


def test_password_file_symlink_is_refused(tmp_path):
    """A symbolic link (to /etc/shadow, say) is refused without being followed."""
    link = tmp_path / "pw"
    link.symlink_to("/etc/shadow")
    with pytest.raises(config_check.ConfigError) as info:
        config_check.read_password_file(link)
    assert "symbolic link" in str(info.value) and "root:" not in str(info.value)


def test_password_file_that_is_a_fifo_or_a_directory_is_refused(tmp_path):
    """A FIFO (which would block a reader) or a directory is not a regular file: refused at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (fifo, tmp_path):
        with pytest.raises(config_check.ConfigError, match="not a regular file"):
            config_check.read_password_file(path)


def test_inline_password_in_a_readable_config_is_refused(tmp_path):
    """A password inline in a 0644 config is refused with one line pointing at password_file; 0600 is fine."""
    f = tmp_path / "c.toml"
    f.write_text(f'[upstream]\nurl = "http://alice:{SECRET.split("/")[0]}@gw.example.net:7777"\n')
    f.chmod(0o644)
    _, problems = check(f)
    assert keys(problems) == ["upstream.url"]
    assert "password_file" in problems[0].message and "SECRET" not in problems[0].message
    f.chmod(0o600)
    assert check(f)[1] == []


def test_config_writable_by_others_is_refused(tmp_path):
    """A config file others may write would let them choose what root runs: refused."""
    f = tmp_path / "c.toml"
    f.write_text("")
    f.chmod(0o666)
    _, problems = check(f)
    assert keys(problems) == ["(file)"] and "chmod go-w" in problems[0].message


def test_help_recommends_password_file_not_the_command_line():
    """`--help` and `up --help` no longer show a password on the command line; they point at password_file."""
    for args in (["--help"], ["up", "--help"]):
        res = run(*args)
        assert res.returncode == 0
        text = " ".join(res.stdout.split())
        assert "user:pass" not in text and "password_file" in text


def test_a_password_on_the_command_line_is_warned_about(capsys):
    """A password given in --upstream works but prints one warning line on stderr, without the password."""
    from atlantic.client import cli

    cfg = cli._load("/dev/null", ["http://alice:hunter2@10.0.0.1:3128"])
    assert cfg.upstream.url == "http://alice:hunter2@10.0.0.1:3128"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "password_file" in err and "hunter2" not in err
    cli._load("/dev/null", ["http://alice@10.0.0.1:3128"])
    assert capsys.readouterr().err == ""


@needs_root
def test_status_needs_no_password_file(shared_dir):
    """Another user's `status` works with a config naming root's password file (it is not read)."""
    pw = private(shared_dir / "pw", "s3cret\n")
    f = shared_dir / "c.toml"
    f.write_text(f'[upstream]\nurl = "http://alice@10.0.0.1:3128"\npassword_file = "{pw}"\n'
                 f'[daemon]\nstate_dir = "{shared_dir / "state"}"\n')
    f.chmod(0o644)
    res = run("status", "--json", user="65534", env={"ATLANTIC_CONFIG": str(f)})
    assert res.returncode == 0, res.stderr
    assert '"state": "down"' in res.stdout
