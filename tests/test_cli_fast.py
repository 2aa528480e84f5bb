"""`atlantic status` and `atlantic version` answered without typer (client/main.py): the
same bytes and exit codes as the full command line, and none of its heavy imports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from atlantic.client import main as fast
from atlantic.client.config import parse_config
from atlantic.client.control import ControlServer
from atlantic.client.state import StatePaths, write_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
REPORT = {
    "state": "up", "pid": 42, "version": "0.1.0", "tun": "atl0", "ipv6": "captured", "udp_policy": "drop",
    "upstream": "http://customer-alice@gw.example.net:7777", "flows_total": 3, "flows_active": 1,
    "flow_kinds": {"http": 2, "tls": 1},
    "last_error": {"message": "CONNECT site.example:443 refused by the upstream", "count": 2, "age_s": 1.5},
}
FAST_CLI = "import sys; sys.argv[0] = 'atlantic'; from atlantic.client.main import main; main()"  # the console script
FULL_CLI = "import sys; sys.argv[0] = 'atlantic'; from atlantic.client.cli import main; main()"  # typer for everything
HEAVY = ("typer", "rich", "click", "pyroute2", "scapy", "cryptography", "asyncio", "dataclasses", "tomllib",
         "atlantic.client.cli", "atlantic.client.config", "atlantic.client.lifecycle")


def fast_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAST_CLI, *args], capture_output=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def full_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FULL_CLI, *args], capture_output=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def assert_same(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The fast path and the typer command print the same bytes and exit alike; the fast result."""
    quick, full = fast_run(*args, env=env), full_run(*args, env=env)
    assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
    assert b"Traceback" not in quick.stderr
    return quick


@pytest.fixture
def state_dir():
    """A short private directory: unix socket paths are short."""
    path = Path(tempfile.mkdtemp(prefix="atl-fast-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def config(state_dir):
    """A config that names ``state_dir`` and nothing else."""
    f = state_dir / "atlantic.toml"
    f.write_text(f'[daemon]\nstate_dir = "{state_dir / "run"}"\n')
    return f


@contextlib.contextmanager
def daemon(state_dir: Path, handler=lambda _req: REPORT):
    """A real control server where a daemon under ``state_dir`` would listen."""
    paths = StatePaths.for_namespace(state_dir)
    paths.dir.parent.mkdir(exist_ok=True)
    server = ControlServer(paths.control_socket, {"status": handler}, {"stop"})
    server.start()
    try:
        yield paths
    finally:
        server.close()


@pytest.mark.parametrize("fmt", [(), ("--json",)])
def test_status_not_up_matches_the_full_command(config, fmt):
    """With nothing up, text and JSON output and the exit code are the typer command's."""
    res = assert_same("status", *fmt, env={"ATLANTIC_CONFIG": str(config)})
    assert res.returncode == 0 and b"down" in res.stdout


@pytest.mark.parametrize("fmt", [(), ("--json",)])
@pytest.mark.parametrize("how", ["env", "--config", "-c", "--config="])
def test_status_up_matches_the_full_command(config, state_dir, fmt, how):
    """A daemon's reply prints the same, whichever way the config is named."""
    if how == "env":
        args, env = ("status", *fmt), {"ATLANTIC_CONFIG": str(config)}
    elif how == "--config=":
        args, env = ("status", f"--config={config}", *fmt), {"ATLANTIC_CONFIG": "/nonexistent.toml"}
    else:
        args, env = ("status", *fmt, how, str(config)), {"ATLANTIC_CONFIG": "/nonexistent.toml"}
    with daemon(state_dir / "run"):
        res = assert_same(*args, env=env)
    assert res.returncode == 0
    if fmt:
        assert json.loads(res.stdout) == REPORT


def test_status_of_a_dead_daemon_matches_the_full_command(config, state_dir):
    """A state file whose daemon died: the same problem line and exit code 3."""
    paths = StatePaths.for_namespace(state_dir / "run")
    write_state(paths, {"pid": 2**22 + 7, "upstream": "direct"})
    res = assert_same("status", env={"ATLANTIC_CONFIG": str(config)})
    assert res.returncode == 3 and b"died" in res.stdout


def test_status_of_a_silent_socket_matches_the_full_command(config, state_dir):
    """A socket nobody listens on: the same 'does not answer' report and exit code 3."""
    paths = StatePaths.for_namespace(state_dir / "run")
    paths.dir.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(paths.control_socket))  # bound, never listening: connections are refused
        res = assert_same("status", "--json", env={"ATLANTIC_CONFIG": str(config)})
    assert res.returncode == 3 and b"does not answer" in res.stdout


@pytest.mark.parametrize("text", [
    "[routing]\ntable = 254\n",  # valid TOML, invalid setting elsewhere than state_dir
    '[daemon]\nstate_dir = "relative/dir"\n',
    '[daemon]\nstate_dir = "/a/../b"\n',
    "[daemon\n",  # not TOML
    "[daemon]\n[daemon]\n",  # a table twice
    '[upstream]\nurl = "ftp://x"\n',
    '[upstream]\nurl = "http://alice:hunter2@10.1.2.3:3128"\n',  # a password in a file others may read
    "[capture]\nlan = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
])
def test_bad_config_is_the_same_one_line(state_dir, text):
    """A config the loader refuses gives the full command's error line and exit code 1."""
    f = state_dir / "bad.toml"
    f.write_text(text)
    res = assert_same("status", "--json", env={"ATLANTIC_CONFIG": str(f)})
    assert res.returncode == 1 and res.stdout == b"" and res.stderr.count(b"\n") == 1


def test_config_others_may_write_is_refused_alike(config):
    """A config file writable by other users is refused by both, with the same line."""
    config.chmod(0o666)
    res = assert_same("status", env={"ATLANTIC_CONFIG": str(config)})
    assert res.returncode == 1 and b"writable by other users" in res.stderr


def test_missing_named_config_and_colour_codes_in_its_name(state_dir):
    """A named file that does not exist is one line; colour codes in its name are dropped as click drops them."""
    res = assert_same("status", "--config", str(state_dir / "\x1b[31mred.toml"))
    assert res.returncode == 1 and b"does not exist" in res.stderr and b"\x1b" not in res.stderr


def test_config_only_the_full_loader_reads(state_dir):
    """A valid config the fast reader does not vouch for (an IPv6 proxy) still answers the same."""
    f = state_dir / "proxy.toml"
    f.write_text(f'[upstream]\nurl = "http://alice@[::1]:3128"\n[daemon]\nstate_dir = "{state_dir}"\n')
    assert fast._simple_file_state_dir(str(f)) is None
    with daemon(state_dir):
        res = assert_same("status", "--json", env={"ATLANTIC_CONFIG": str(f)})
    assert json.loads(res.stdout) == REPORT


def test_version_matches_the_full_command():
    """`atlantic version` prints the same line either way."""
    res = assert_same("version")
    assert res.returncode == 0 and res.stdout.startswith(b"atlantic ")


@pytest.mark.parametrize("args", [["status", "--help"], ["status", "--jsn"], ["status", "--config"],
                                  ["status", "-cfile"], ["version", "--help"]])
def test_anything_else_goes_to_typer(args):
    """Options the fast path does not know are left to typer (help, usage errors)."""
    assert fast._parse_status_args(args[1:]) is None or args[0] != "status"
    res = fast_run(*args, env={"ATLANTIC_CONFIG": "/dev/null"})
    full = full_run(*args, env={"ATLANTIC_CONFIG": "/dev/null"})
    assert (res.returncode, res.stdout, res.stderr) == (full.returncode, full.stdout, full.stderr)


@pytest.mark.parametrize("args", [["status", "--json"], ["status"], ["version"]])
def test_fast_commands_import_nothing_heavy(config, args):
    """`status` and `version` import neither typer, rich, the netlink, packet or crypto
    libraries, asyncio, nor the config module."""
    script = ("import json, sys\nsys.argv = ['atlantic', *sys.argv[1:]]\nfrom atlantic.client.main import main\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "ATLANTIC_CONFIG": str(config)})
    loaded = set(json.loads(res.stderr.strip().splitlines()[-1]))
    assert "atlantic.client.main" in loaded
    assert not {m for m in loaded if m in HEAVY or m.split(".")[0] in HEAVY}


def test_fast_constants_are_the_loaders():
    """The defaults the fast path repeats are the config module's own."""
    from atlantic.client.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, DaemonConfig

    assert fast.CONFIG_ENV == CONFIG_ENV and Path(fast.DEFAULT_CONFIG_PATH) == DEFAULT_CONFIG_PATH
    assert Path(fast.DEFAULT_STATE_DIR) == DaemonConfig().state_dir


def test_status_report_is_lifecycle_status(config, state_dir):
    """main.status_report gives lifecycle.status's report: down, not answering, died, up."""
    from atlantic.client import lifecycle
    from atlantic.client.config_check import load_config

    run = state_dir / "run"
    cfg = load_config(str(config), secrets=False)
    seen = [(fast.status_report(str(run)), lifecycle.status(cfg))]  # nothing there
    paths = StatePaths.for_namespace(run)
    paths.dir.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(paths.control_socket))
        seen.append((fast.status_report(str(run)), lifecycle.status(cfg)))  # refuses
        write_state(paths, {"pid": os.getpid(), "upstream": "direct"})
        seen.append((fast.status_report(str(run)), lifecycle.status(cfg)))  # state, no answer
    paths.control_socket.unlink()
    with daemon(run):
        seen.append((fast.status_report(str(run)), lifecycle.status(cfg)))  # up
    for quick, full in seen:
        assert quick == full
    assert [q.get("state") for q, _ in seen] == ["down", "down", "down", "up"]


def test_the_shipped_config_is_read_without_the_loader():
    """packaging/deb/atlantic.toml as installed needs no full loader for `status`."""
    shipped = ROOT / "packaging" / "deb" / "atlantic.toml"
    cfg, problems = parse_config(shipped.read_text())
    assert problems == []
    assert fast._simple_file_state_dir(str(shipped)) == str(cfg.daemon.state_dir)


_SIMPLE = st.sampled_from(["", "# comment", "  # x", "[upstream]", "[capture]", "[daemon]", 'url = "direct"',
                          'state_dir = "/run/x"', 'state_dir="/tmp/a b" # c'])
_LINES = st.one_of(
    _SIMPLE, _SIMPLE, _SIMPLE,
    st.sampled_from(["[tun]", "[ daemon ]", 'url = "http://a@b:1"', "url = 'direct'", 'state_dir = "/"',
                     'state_dir = "/a/../b"', "state_dir = 5", 'daemon.state_dir = "/x"', "mtu = 9000", "\t",
                     "# \x01", "x\r", 'state_dir = "/a\\tb"']),
    st.builds(lambda v: f'state_dir = "/{v}"', st.text(alphabet="/a.\t é\\\"\x00\x7f\u2028", max_size=12)),
    st.builds(lambda v: f'state_dir = "{v}"', st.text(max_size=210)),
    st.builds(lambda v: f"# {v}", st.text(max_size=20)),
)

def _shaped(value: str, comment: str, at: int, line: str) -> list[str]:
    """A file shaped like the shipped one (sections in order, a state_dir line), one line replaced."""
    body = ["# settings", "[upstream]", 'url = "direct"', "[capture]", "", "[daemon]", f'state_dir = "/{value}"',
            f"# {comment}", ""]
    body[at] = line
    return body


_PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=210)
_SHAPED = st.builds(_shaped, st.one_of(st.text(alphabet="/a.\t é\\\"\x00\x7f\u2028", max_size=12),
                                       _PRINTABLE, st.text(max_size=210)),
                    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20), st.integers(0, 8),
                    st.one_of(_SIMPLE, _LINES))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.one_of(st.lists(_LINES, max_size=8), _SHAPED))
def test_what_the_fast_reader_accepts_the_loader_accepts(state_dir, lines):
    """Whenever the fast reader vouches for a file, parse_config finds no problem and the same state_dir."""
    f = state_dir / "gen.toml"
    f.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    state = fast._simple_file_state_dir(str(f))
    if state is None:
        return
    cfg, problems = parse_config(f.read_bytes().decode("utf-8"))
    assert problems == [] and Path(state) == cfg.daemon.state_dir


def _laptop_config(state_dir: Path) -> Path:
    """A real laptop's config (README.md's shape): two proxies with password files (mode 600),
    a username template, [health], [pool], [capture], [tls], [tun], [routing], [daemon]."""
    for name in ("password", "password-backup"):
        (state_dir / name).write_text("hunter2\n")
        (state_dir / name).chmod(0o600)
    f = state_dir / "laptop.toml"
    f.write_text(f"""\
[[upstream]]                                 # the first is used while it is healthy
url = "http://customer-me@gw.example.net:7777"
password_file = "{state_dir}/password"
username_template = "customer-{{user}}-cc-{{country}}-sessid-{{session}}-sesstime-{{minutes}}"
country = "us"
session_minutes = 10

[[upstream]]
url = "https://customer-me@backup.example.net:8443"
password_file = "{state_dir}/password-backup"

[health]
probe_url = "http://cp.cloudflare.com/generate_204"
echo_url = "http://ip-api.com/json/?fields=query,countryCode"
failback_hold_s = 60

[pool]
max_connections = 256
warm_tunnels = 2

[capture]
lan = ["192.168.1.0/24"]
allow_interfaces = ["docker0", "br-*"]
ports = [80, 443]

[tls]
intercept = ["*.example-video.com"]

[routing]
fwmark = 0x2026

[daemon]
state_dir = "{state_dir}"
log_level = "info"
""")
    f.chmod(0o644)
    return f


def test_a_laptop_config_is_answered_without_the_loader(state_dir):
    """A real config (proxy URLs, password files, [health], [pool], [capture], [tls]) is
    answered as the full command answers it, importing neither tomllib nor the config modules."""
    f = _laptop_config(state_dir)
    assert fast._simple_file_state_dir(str(f)) == str(state_dir)
    with daemon(state_dir):
        res = assert_same("status", "--json", env={"ATLANTIC_CONFIG": str(f)})
        assert json.loads(res.stdout) == REPORT
        test_fast_commands_import_nothing_heavy(f, ["status", "--json"])


_LAPTOP_BROKEN = [  # (what the laptop config holds instead, the key the loader names)
    (("echo_url = \"http://ip-api.com", "echo_url = \"ftp://ip-api.com"), "health.echo_url"),
    (('country = "us"\n', ""), "upstream[1].username_template"),  # {country} without a country
    (("sesstime-{minutes}", "sesstime-{minutes:>9}"), "upstream[1].username_template"),
    (("session_minutes = 10", "session_minutes = 0"), "upstream[1].session_minutes"),
    (('url = "https://customer-me@backup.example.net:8443"', 'url = "direct"'), "upstream"),
    (("customer-me@gw.example.net", "customer-me:hunter2@gw.example.net"), "upstream[1].url"),  # mode 644
    (("gw.example.net:7777", "gw.example.net:77777"), "upstream[1].url"),
    (('"192.168.1.0/24"', '"192.168.1.300/24"'), "capture.lan"),
    (('"br-*"', '"br-*-too-long-name"'), "capture.allow_interfaces"),
    (("[80, 443]", "[80, 0]"), "capture.ports"),
    (('"*.example-video.com"', '"*"'), "tls.intercept"),
    (("max_connections = 256", "max_connections = 256.0"), "pool.max_connections"),
    (("fwmark = 0x2026", "fwmark = 0x0"), "routing.fwmark"),
    (('log_level = "info"', 'log_level = "loud"'), "daemon.log_level"),
    (("[pool]", "[pool]\nmax_idle = 3"), "pool.max_idle"),
    (("[health]", "[health]\nenabled = false"), "health.enabled"),
]


@pytest.mark.parametrize(("change", "key"), _LAPTOP_BROKEN, ids=[k for _, k in _LAPTOP_BROKEN])
def test_a_broken_laptop_config_is_refused_with_config_checks_line(state_dir, change, key):
    """A laptop config with one thing wrong: `status` prints the one line `up` prints
    (the typer path) and `config check` names first, and exits 1."""
    f = _laptop_config(state_dir)
    old, new = change
    assert old in f.read_text()
    f.write_text(f.read_text().replace(old, new, 1))
    res = assert_same("status", "--json", env={"ATLANTIC_CONFIG": str(f)})
    check = full_run("config", "check", str(f))
    assert res.returncode == 1 and check.returncode == 1 and res.stdout == b""
    lines = check.stderr.splitlines()
    more = f" (and {len(lines) - 1} more; run `atlantic config check`)".encode() if len(lines) > 1 else b""
    assert res.stderr == b"atlantic: " + lines[0] + more + b"\n"
    assert res.stderr.startswith(f"atlantic: {f}: {key}: ".encode())
