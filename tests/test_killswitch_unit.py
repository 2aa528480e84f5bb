"""packaging/atlantic-killswitch.service, pinned: an optional oneshot that seals the machine
before any network is up, hardened; where systemd-analyze exists it must pass ``verify``
and keep its offline security score. Offline only: nothing is installed or started."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_unit_file import assert_exposure_at_most, assert_verify_clean, one, parse_unit

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "atlantic-killswitch.service"
MAX_EXPOSURE = 1.4  # measured 1.4 OK with systemd 252 (packaging/unit-security.sh)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_runs_once_before_the_network_and_stays_active(unit):
    """Early boot: no default dependencies, before network-pre.target (which it pulls in),
    after the file systems; a oneshot that stays active; stop lifts it; installed into sysinit."""
    u, s = unit["Unit"], unit["Service"]
    assert one(u, "DefaultDependencies") == "no"
    assert "network-pre.target" in one(u, "Before").split() and one(u, "Wants") == "network-pre.target"
    assert one(u, "After") == "local-fs.target"
    assert one(s, "Type") == "oneshot" and one(s, "RemainAfterExit") == "yes"
    assert one(s, "ExecStart") == "/usr/bin/atlantic killswitch apply"
    assert one(s, "ExecStop") == "/usr/bin/atlantic killswitch remove"
    assert one(unit["Install"], "WantedBy") == "sysinit.target"


def test_only_nft_over_netlink_in_the_host_namespace(unit):
    """CAP_NET_ADMIN only, netlink only, no IP at all; never a private network (it must seal the host's)."""
    s = unit["Service"]
    assert one(s, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert one(s, "RestrictAddressFamilies") == "AF_NETLINK"
    assert one(s, "IPAddressDeny") == "any"
    assert "PrivateNetwork" not in s and "PrivateUsers" not in s
    assert one(s, "NoNewPrivileges") == "yes" and one(s, "ProtectSystem") == "strict"


@pytest.fixture
def runnable_unit(tmp_path) -> Path:
    path = tmp_path / "atlantic-killswitch.service"
    path.write_text(UNIT.read_text().replace("/usr/bin/atlantic", "/bin/true"))
    return path


def test_systemd_analyze_verify_is_clean(runnable_unit):
    """systemd parses every line without a warning."""
    assert_verify_clean(runnable_unit)


def test_offline_security_score(runnable_unit):
    """`systemd-analyze security --offline=yes` keeps the unit at or below the measured exposure."""
    assert_exposure_at_most(runnable_unit, MAX_EXPOSURE)
