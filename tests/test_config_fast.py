"""client/config_fast.py: whatever `status`'s one-pass reader vouches for, the full loader
accepts with the same state directory (so every refusal stays the loader's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from atlantic.client import config_fast
from atlantic.client.config import DaemonConfig, parse_config
from atlantic.client.config_upstream import MAX_UPSTREAMS
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _loader_state_dir(text: str) -> str | None:
    cfg, problems = parse_config(text)
    return None if problems else str(cfg.daemon.state_dir)


def test_constants_are_the_loaders():
    """The default state directory and the upstream limit are the loader's."""
    assert Path(config_fast.DEFAULT_STATE_DIR) == DaemonConfig().state_dir
    assert config_fast.MAX_UPSTREAMS == MAX_UPSTREAMS


def test_readme_and_shipped_configs_are_vouched_for():
    """README.md's laptop config and the shipped file are read in one pass, as the loader reads them."""
    readme = ROOT.joinpath("README.md").read_text()
    block = readme.split("```toml\n[[upstream]]", 1)[1].split("```", 1)[0]
    for text in ("[[upstream]]" + block, ROOT.joinpath("packaging/deb/atlantic.toml").read_text(), ""):
        assert config_fast.vouched_state_dir(text) == _loader_state_dir(text) is not None


@pytest.mark.parametrize("text", [
    '[upstream]\nurl = "http://a:pw@h:1"\n',  # a password: the file's mode decides
    '[upstream]\nurl = "http://a@[::1]:1"\n',
    '[daemon]\nmetrics = "127.0.0.1:9477"\n',
    '[capture]\ndns_resolver = "1.1.1.1:53"\n',
    'url = "direct"\n',  # a key in the root table
    '[daemon]\nstate_dir = "/x" # a\r\n',
    '[daemon]\nstate_dir = "/x\\ty"\n',  # an escape
    "[pool]\nwarm_tunnels = 1_0\n",
    "[pool]\nwarm_tunnels = +1\n",
    "[pool]\n warm_tunnels = 1\n warm_tunnels = 1\n",
    "[[upstream]]\n[upstream]\n",
    "[capture]\nlan = [\n]\n",
])
def test_what_it_leaves_to_the_loader(text):
    """Valid or not, these are outside the subset: the full loader decides."""
    assert config_fast.vouched_state_dir(text) is None


_VALUES = [
    0, 1, 2, 9, 10, 99, 100, 253, 254, 599, 600, 1023, 1024, 1279, 1280, 1440, 1441, 4096, 4097, 32765, 32766,
    65535, 65536, 86400, 86401, 1_000_000, 1_000_001, 1_048_576, 1_048_577, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    0.05, 0.1, 0.4, 0.5, 1.0, 60.5, 119.9, 120.0, 120.5, 1800.0, 1800.5, 3600.0, 3600.5, True, False,
    "direct", "DIRECT", "http://a@b.c:1", "https://x.y:65535/", "http://a:b@c:1", "http://[::1]:3128", "http://h:65536",
    "http://-a:1", "http://a_b:1", "ftp://x:1", "http://h:01", "capture", "block", "tun", "redirect", "drop", "reject",
    "tunnel", "debug", "info", "loud", "9.9.9.9:53", "1.1.1.1:53", "/run/x", "/", "/a/../b", "/a/..", "rel", "",
    "192.168.1.0/24", "192.168.1.7/24", "300.1.1.1/8", "10.0.0.0/33", "01.2.3.4/8", "::1/128", "docker0", "br-*",
    "*", ".", "..", ".*", "a" * 15, "a" * 16, "*.example.com", "example.com", "com", "*.com", "1.2.3.4", "a.b-",
    "a.-b", "x.y_", "*.*.a.b", "A.B", "customer-{user}-cc-{country}", "{user}{session}{minutes}", "{nope}",
    "{user:>5}", "{user!r}", "{", "us", "u s", "a" * 33, "http://cp.cloudflare.com/generate_204", "https://x",
    "https://x/?a=b#c", "ftp://x", "http://u@x/", "http://x:99/", "http:///x", "http://x y", "198.18.0.1/30",
    "fd00:a71a::1/126", "é", "a\tb",
]
_KEYS = sorted({k for rules in config_fast._RULES.values() for k in rules} | {"nope", "metrics"})
_HEADERS = [f"[{name}]" for name in config_fast._RULES] + ["[[upstream]]", "[[upstream]]", "[nope]", "[ pool ]"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


_VALUE = st.one_of(st.sampled_from(_VALUES), st.lists(st.sampled_from(_VALUES), max_size=3))
_LINE = st.one_of(
    st.sampled_from(_HEADERS),
    st.builds(lambda k, v: f"{k} = {_toml(v)}", st.sampled_from(_KEYS), _VALUE),
    st.builds(lambda k, v, c: f"{k}={_toml(v)}  # {c}", st.sampled_from(_KEYS), _VALUE, st.text(max_size=8)),
    st.sampled_from(["", "# c", "fwmark = 0x2026", "fwmark = 0X26", "mtu = 9000.", "mtu = 1e4", "x = [1,,2]",
                     "ports = [80,]", "ports = [[80]]", "lan = []", "state_dir = '/x'"]),
    st.text(max_size=12),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_LINE, max_size=14))
def test_what_it_vouches_for_the_loader_accepts(lines):
    """Whenever the one-pass reader vouches for a file, parse_config finds no problem and the same state_dir."""
    text = "\n".join(lines)
    state = config_fast.vouched_state_dir(text)
    if state is not None:
        assert _loader_state_dir(text) == state


@pytest.mark.parametrize("section", sorted(config_fast._RULES))
def test_every_key_with_every_sample_value(section):
    """Each key alone in its table, with each sample value and a list of it: vouched means
    accepted; and each key is vouched for with some value (no rule is dead)."""
    headers = [f"[{section}]"] + (["[[upstream]]"] if section == "upstream" else [])
    for key in config_fast._RULES[section]:
        vouched = 0
        for value in _VALUES + [[v] for v in _VALUES]:
            for header in headers:
                text = f"{header}\n{key} = {_toml(value)}\n"
                if (state := config_fast.vouched_state_dir(text)) is not None:
                    vouched += 1
                    assert _loader_state_dir(text) == state, text
        assert vouched, key
