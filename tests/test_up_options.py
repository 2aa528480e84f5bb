"""``atlantic up --foreground`` without typer (client/up_options.py, main.py's fast path): it
accepts exactly typer's ``up`` options, refuses with the same line, and leaves the daemon's
process without typer, rich and pydantic."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from atlantic.client.cli import app
from atlantic.client.up_options import FOREGROUND_OPTIONS, parse_foreground


def test_the_fast_parser_knows_exactly_typers_up_options():
    """Every option of typer's `up` (long name, short name, repeatable) is in FOREGROUND_OPTIONS,
    and nothing else is: the two can never accept different command lines."""
    up = typer.main.get_command(app).commands["up"]
    typers = {}
    for param in up.params:
        longs = [o for o in param.opts if o.startswith("--")]
        shorts = [o for o in param.opts if not o.startswith("--")]
        typers[longs[0]] = (shorts[0] if shorts else None, bool(param.multiple))
    assert typers.pop("--foreground") == (None, False)
    assert typers == FOREGROUND_OPTIONS


@pytest.mark.parametrize(("args", "parsed"), [
    (["--foreground"], {}),
    (["--foreground", "--config", "/etc/a.toml"], {"--config": ["/etc/a.toml"]}),
    (["-c", "/a", "--foreground", "--config=/b"], {"--config": ["/b"]}),  # the last one wins, as in typer
    (["--foreground", "-u", "http://p:1", "--upstream=http://q:2"], {"--upstream": ["http://p:1", "http://q:2"]}),
    (["--intercept", "a.test", "--intercept", "b.test", "--foreground", "--origin-ca", "/ca.pem",
      "--metrics", "127.0.0.1:9477"],
     {"--intercept": ["a.test", "b.test"], "--origin-ca": ["/ca.pem"], "--metrics": ["127.0.0.1:9477"]}),
    (["--config", "/a"], None),  # not the daemon: typer starts it in the background
    (["--foreground", "--help"], None),
    (["--foreground", "--confg", "/a"], None),  # a typo: typer says what is wrong
    (["--foreground", "--config"], None),  # no value
    (["--foreground", "--config", "--metrics", "x"], None),
])
def test_parse_foreground(args, parsed):
    assert parse_foreground(args) == parsed


def _atlantic(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atlantic", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def test_a_refusal_is_the_same_line_with_and_without_typer(tmp_path):
    """A bad config file, a bad --upstream and a bad --metrics get the line typer's `up` prints."""
    if os.geteuid() != 0:
        pytest.skip("`up` refuses non-root callers before reading anything")
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream\n")
    good = tmp_path / "good.toml"
    good.write_text('[upstream]\nurl = "direct"\n')
    for args in (["--config", str(bad)], ["--config", str(good), "--upstream", "ftp://x"],
                 ["--config", str(good), "--metrics", "nowhere"]):
        fast, slow = _atlantic("up", "--foreground", *args), _atlantic("up", *args)
        assert fast.returncode == slow.returncode == 1
        assert fast.stderr == slow.stderr and fast.stderr.startswith("atlantic: ") and fast.stderr.count("\n") == 1


def test_non_root_gets_typers_refusal():
    """A non-root caller gets the same one line from both paths."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "atlantic", "up"]
    fast = subprocess.run([*argv, "--foreground"], capture_output=True, text=True, timeout=60, check=False, cwd="/")
    slow = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert fast.returncode == slow.returncode == 1
    assert fast.stderr == slow.stderr
    assert fast.stderr.startswith("atlantic: `atlantic up` changes routing") and fast.stderr.count("\n") == 1


def test_the_daemons_process_loads_no_cli_framework(tmp_path):
    """The fast path runs `up --foreground` without importing typer, rich, click or pydantic
    (here it stops at a missing config file, after the whole option and config path)."""
    code = ("import sys; sys.argv = ['atlantic', 'up', '--foreground', '-c', sys.argv[1]]\n"
            "from atlantic.client import main\n"
            "try:\n    main.main()\nexcept SystemExit as e:\n    code = e.code\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'rich', 'click', 'pydantic'})\n"
            "print(code, loaded)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absent.toml")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.stdout.strip() == "1 []", res.stderr
    assert "does not exist" in res.stderr
