"""packaging/atlantic.service, pinned: the notify/watchdog contract, the hardening keys, and
what the code needs from them (capabilities, sysctl paths, limits). Where systemd-analyze
exists, the unit must also pass ``verify`` and keep its offline security score.

Offline only: nothing here installs or starts the unit (that would route this machine
through the tunnel).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from atlantic.client import lifecycle
from atlantic.client.config import DaemonConfig
from atlantic.client.daemon import DRAIN_TIMEOUT_S
from atlantic.system import nft, routing

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "atlantic.service"
MAX_EXPOSURE = 2.5  # measured 2.5 OK with systemd 252 (packaging/unit-security.sh) (the unit before this one: 9.1 UNSAFE)
OFFLINE_SINCE = 250  # `systemd-analyze security --offline=` first shipped in systemd 250


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value in order (keys such as SystemCallFilter repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"not a unit line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, f"not a plain time span: {value!r}"
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_notify_and_watchdog_contract(service):
    """Type=notify from the main process only, with a watchdog and a restart on failure."""
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecStart") == "/usr/bin/atlantic up --foreground"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "WatchdogSec")) == 30


def test_no_exec_stop_so_a_crash_stays_closed(service):
    """ExecStop also runs after a crash; `atlantic down` there would lift the kill switch."""
    assert "ExecStop" not in service and "ExecStopPost" not in service


def test_stop_timeout_fits_the_drain(service):
    """The drain plus two worst-case nft calls (the TCP redirect, the kill switch) fit, and
    systemd waits as long as `atlantic down` does."""
    timeout = seconds(one(service, "TimeoutStopSec"))
    assert timeout >= DRAIN_TIMEOUT_S + 2 * nft.NFT_TIMEOUT_S
    assert timeout == lifecycle.STOP_TIMEOUT_S


def test_open_files_limit_matches_the_daemon_default(service):
    """The hard limit is what [daemon] max_open_files raises the soft limit to by default."""
    assert int(one(service, "LimitNOFILE")) == DaemonConfig().max_open_files


def test_only_network_capabilities(service):
    """Root, but only CAP_NET_ADMIN, CAP_NET_RAW and CAP_CHOWN (the socket's group) survive;
    no new privileges."""
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_CHOWN"}
    assert set(one(service, "CapabilityBoundingSet").split()) == caps
    assert set(one(service, "AmbientCapabilities").split()) == caps
    assert one(service, "NoNewPrivileges") == "yes"


def test_devices_and_address_families(service):
    """Only the TUN device, and only the socket families the daemon and nft open."""
    assert one(service, "DevicePolicy") == "closed"
    assert one(service, "DeviceAllow") == "/dev/net/tun rw"
    assert set(one(service, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


@pytest.mark.parametrize("key", [
    "ProtectHome", "PrivateTmp", "PrivateIPC", "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
])
def test_hardening_switch_is_on(service, key):
    """Each sandboxing switch is on."""
    assert one(service, key) == "yes"


def test_filesystem_and_syscalls(service):
    """Read-only system, private umask, the system-service syscall set, native ABI only."""
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "UMask") == "0077"
    assert one(service, "SystemCallArchitectures") == "native"
    filters = service["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert set(filters[1].lstrip("~").split()) == {"@privileged", "@resources"} and filters[1][0] == "~"
    assert one(service, "SystemCallErrorNumber") == "EPERM"
    assert one(service, "RuntimeDirectory") == one(service, "StateDirectory") == "atlantic"
    assert one(service, "RuntimeDirectoryPreserve") == "yes"


def test_every_sysctl_the_daemon_writes_is_writable(service):
    """ProtectKernelTunables makes /proc/sys read-only; what routing writes must be carved out."""
    writable = service["ReadWritePaths"][0].split()
    plan = routing.plan_routing("atl0", 2026, 0x2026, 32000, ipv6="captured", capture_dns=True)
    paths = [f"/proc/sys/{s.path}" for s in plan.sysctls] + ["/proc/sys/net/ipv6/conf/atl0/disable_ipv6"]  # tun.py
    assert paths and all(any(p.startswith(w.rstrip("/") + "/") for w in writable) for p in paths)


def test_password_credential_has_a_fallback(service):
    """The password arrives as a credential; a non-empty SetCredential lets the unit start without it."""
    assert one(service, "LoadCredential") == "proxy-password:/etc/atlantic/proxy-password"
    name, _, value = one(service, "SetCredential").partition(":")
    assert name == "proxy-password" and value  # systemd 252 ignores an empty value


def _systemd_version() -> int:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    m = re.match(r"systemd (\d+)", out)
    if not m:
        pytest.skip(f"cannot tell the systemd version from {out[:60]!r}")
    return int(m.group(1))


@pytest.fixture
def runnable_unit(tmp_path) -> Path:
    """The unit with ExecStart pointed at /bin/true, so verify does not need atlantic installed."""
    text = UNIT.read_text().replace("ExecStart=/usr/bin/atlantic up --foreground", "ExecStart=/bin/true")
    path = tmp_path / "atlantic.service"
    path.write_text(text)
    return path


def assert_verify_clean(unit_file: Path) -> None:
    """systemd itself parses every line (it warns on stderr, yet exits 0, for unknown or bad ones)."""
    _systemd_version()
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_file)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def assert_exposure_at_most(unit_file: Path, most: float) -> None:
    """`systemd-analyze security --offline=yes` scores ``unit_file`` at or below ``most``."""
    version = _systemd_version()
    if version < OFFLINE_SINCE:
        pytest.skip(f"systemd {version} has no security --offline (needs {OFFLINE_SINCE})")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_file)],
                       capture_output=True, text=True, timeout=60, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(unit_file.name)}: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= most, m.group(0)


def test_systemd_analyze_verify_is_clean(runnable_unit):
    """systemd itself parses every line of the unit."""
    assert_verify_clean(runnable_unit)


def test_offline_security_score(runnable_unit):
    """`systemd-analyze security --offline=yes` keeps the unit at or below the measured exposure."""
    assert_exposure_at_most(runnable_unit, MAX_EXPOSURE)
