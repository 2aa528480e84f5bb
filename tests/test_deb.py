"""The Debian package from packaging/build-deb.sh: what it holds, and install, upgrade,
remove and purge in a throwaway root (tests/throwaway_root.py: an overlay of this
machine's / in private namespaces), never in the host's own root. No service is started:
the root has no systemd (and neither has this machine).

Marked lab_local: dpkg, mount and chroot need root.
"""

from __future__ import annotations

import io
import marshal
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from throwaway_root import ThrowawayRoot, host_snapshot, snapshot_changes

from atlantic import __version__

pytestmark = pytest.mark.lab_local

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "build-deb.sh"
UPGRADE_VERSION = f"{__version__}+upgrade1"  # sorts after __version__ in dpkg's order
CONFFILE = "/etc/atlantic/atlantic.toml"
LOCAL_EDIT = "# edited on this machine"


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def host_before() -> dict[str, tuple]:
    """The host's watched paths before anything here builds or installs."""
    return host_snapshot()


@pytest.fixture(scope="module")
def debs(tmp_path_factory, host_before) -> dict[str, Path]:
    """Two builds, the project's version and an upgrade to it, zstd (xz takes 15 s more)."""
    out = tmp_path_factory.mktemp("debs")
    built = {}
    for version in (__version__, UPGRADE_VERSION):
        argv = [str(BUILD), "--output", str(out), "--compress", "zstd"]
        argv += ["--version", version] if version != __version__ else []
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, f"build-deb.sh failed:\n{res.stdout}\n{res.stderr}"
        built[version] = out / f"atlantic_{version}_{arch()}.deb"
        assert built[version].is_file(), res.stdout
    return built


@pytest.fixture
def root(tmp_path, debs, host_before):
    """A throwaway root; afterwards no mount is left and the host's files are as before."""
    r = ThrowawayRoot(tmp_path / "root", debs[__version__].parent)
    try:
        yield r
    finally:
        leftover_mounts = r.mounts()
        r.remove()
    assert leftover_mounts == []
    assert snapshot_changes(host_before, host_snapshot()) == [], "the host's files changed"


def dpkg(root: ThrowawayRoot, *args: str) -> subprocess.CompletedProcess:
    res = root.run(["dpkg", *args])
    assert res.returncode == 0, f"dpkg {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def install(root: ThrowawayRoot, version: str = __version__) -> subprocess.CompletedProcess:
    return dpkg(root, "-i", f"/tmp/debs/atlantic_{version}_{arch()}.deb")


def has(root: ThrowawayRoot, test: str) -> bool:
    """``test`` (a test(1) expression) holds inside the root."""
    return root.sh(f"test {test}").returncode == 0


def has_group(root: ThrowawayRoot) -> bool:
    return root.run(["getent", "group", "atlantic"]).returncode == 0


def package_state(root: ThrowawayRoot) -> str:
    return root.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "atlantic"]).stdout


def test_package_holds_the_venv_command_unit_and_conffile(debs):
    """The .deb ships /usr/bin/atlantic -> the venv, the unit, the config as its only conffile."""
    deb = debs[__version__]
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^ Version: {re.escape(__version__)}$", info, re.MULTILINE)
    assert re.search(rf"^ Architecture: {arch()}$", info, re.MULTILINE)
    assert re.search(r"^ Depends: python3\.\d+, libc6, nftables, adduser$", info, re.MULTILINE)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    members = _tar_members(conffiles)
    assert members["./conffiles"].decode() == f"{CONFFILE}\n"
    for script in ("./postinst", "./prerm", "./postrm"):
        assert members[script].startswith(b"#!/bin/sh\n")

    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    entries = {line.split()[5]: line for line in listing.splitlines()}
    assert entries["./usr/bin/atlantic"].endswith("-> /opt/atlantic/venv/bin/atlantic")
    assert entries[f".{CONFFILE}"].startswith("-rw-r--r-- root/root")
    assert entries["./lib/systemd/system/atlantic.service"].startswith("-rw-r--r-- root/root")
    assert entries["./lib/systemd/system/atlantic-killswitch.service"].startswith("-rw-r--r-- root/root")
    assert entries["./usr/share/doc/atlantic/README.md"].startswith("-rw-r--r-- root/root")  # units' Documentation=
    assert entries["./opt/atlantic/venv/bin/atlantic"].startswith("-rwxr-xr-x root/root")
    # The venv runs Debian's python3.X itself, never pyenv's or another venv's.
    assert re.search(r"^l.* \./opt/atlantic/venv/bin/python3\.\d+ -> /usr/bin/python3\.\d+$", listing, re.MULTILINE)
    assert not any("/site-packages/pip/" in name or "/site-packages/setuptools/" in name for name in entries)


def test_package_files_name_only_their_installed_paths(debs, tmp_path):
    """Scripts, pyvenv.cfg and byte code name /opt/atlantic, never the build directory;
    the shipped config passes `atlantic config check` (direct) and the unit runs /usr/bin/atlantic."""
    subprocess.run(["dpkg-deb", "-x", str(debs[__version__]), str(tmp_path)], check=True)
    venv = tmp_path / "opt/atlantic/venv"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink() and not script.name.startswith(("activate", "Activate")):
            assert script.read_bytes().startswith(b"#!/opt/atlantic/venv/bin/python\n"), script
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and str(tmp_path) not in cfg and "/tmp/" not in cfg
    pyc = next((venv / "lib").glob("python3.*/site-packages/atlantic/client/__pycache__/daemon.cpython-*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename.startswith("/opt/atlantic/venv/lib/python3.")

    unit = (tmp_path / "lib/systemd/system/atlantic.service").read_text()
    assert unit == (REPO / "packaging/atlantic.service").read_text()
    assert "\nExecStart=/usr/bin/atlantic up --foreground\n" in unit
    early = (tmp_path / "lib/systemd/system/atlantic-killswitch.service").read_text()
    assert early == (REPO / "packaging/atlantic-killswitch.service").read_text()
    conffile = tmp_path / CONFFILE.lstrip("/")
    check = subprocess.run([str(venv / "bin/python"), "-I", "-m", "atlantic", "config", "check", str(conffile)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert "upstream direct" in check.stdout


def test_install_gives_a_working_command_group_and_config(root):
    """After `dpkg -i`: `atlantic version` runs on Debian's python, the group and the
    conffile exist, the unit is enabled for the next boot and nothing was started."""
    res = install(root)
    assert "not started" in res.stdout
    version = root.run(["atlantic", "version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"atlantic {__version__}"
    assert root.run(["readlink", "-f", "/opt/atlantic/venv/bin/python"]).stdout.strip().startswith("/usr/bin/python3.")
    assert has_group(root)
    assert root.run(["stat", "-c", "%a %U:%G", CONFFILE]).stdout.strip() == "644 root:root"
    assert has(root, "-L /etc/systemd/system/multi-user.target.wants/atlantic.service")
    assert not has(root, "-e /etc/systemd/system/sysinit.target.wants/atlantic-killswitch.service")  # opt-in
    ks = root.run(["atlantic", "killswitch", "--help"])
    assert ks.returncode == 0 and "apply" in ks.stdout
    assert package_state(root) == f"install ok installed {__version__}"


def test_upgrade_keeps_an_edited_conffile(root):
    """Installing the next version over an edited config keeps the edit, without asking."""
    install(root)
    assert root.sh(f"echo '{LOCAL_EDIT}' >> {CONFFILE}").returncode == 0
    install(root, UPGRADE_VERSION)
    assert package_state(root) == f"install ok installed {UPGRADE_VERSION}"
    assert LOCAL_EDIT in root.run(["cat", CONFFILE]).stdout
    assert root.run(["atlantic", "version"]).returncode == 0
    assert has_group(root)


def test_the_early_boot_kill_switch_stays_as_the_admin_chose_across_upgrades(root):
    """Disabled after install and after an upgrade; once enabled, still enabled after an upgrade."""
    link = "-L /etc/systemd/system/sysinit.target.wants/atlantic-killswitch.service"
    install(root)
    install(root, UPGRADE_VERSION)
    assert not has(root, link)
    enabled = root.run(["systemctl", "enable", "atlantic-killswitch.service"])  # as the admin does, offline
    assert enabled.returncode == 0, enabled.stderr
    assert has(root, link)
    install(root)  # a downgrade is an upgrade too, for the maintainer scripts
    assert has(root, link)


def test_remove_keeps_the_config_and_purge_removes_everything(root):
    """`dpkg -r` runs a harmless `atlantic down` and removes the program but keeps
    /etc/atlantic and the group; `dpkg -P` then removes /etc/atlantic (also the admin's
    own files), /var/lib/atlantic, the group and the unit's enablement."""
    install(root)
    assert root.sh("umask 077; echo secret > /etc/atlantic/proxy-password; "
                   "mkdir -p /var/lib/atlantic && touch /var/lib/atlantic/state").returncode == 0

    res = dpkg(root, "-r", "atlantic")
    assert "Atlantic is not up; nothing to restore." in res.stdout  # prerm's `atlantic down`
    assert not has(root, "-e /usr/bin/atlantic -o -L /usr/bin/atlantic -o -e /opt/atlantic")
    assert has(root, f"-f {CONFFILE}")
    assert has_group(root)
    assert package_state(root) == f"deinstall ok config-files {__version__}"

    dpkg(root, "-P", "atlantic")
    assert not has(root, "-e /etc/atlantic -o -e /var/lib/atlantic")
    assert not has_group(root)
    links = root.sh("find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled -name 'atlantic*'")
    assert links.stdout == ""
    assert root.run(["dpkg-query", "-W", "atlantic"]).returncode != 0


def test_remove_is_refused_while_atlantic_down_fails(root):
    """When prerm's `atlantic down` fails (here: a broken config) the package stays
    installed, so the command that lifts the kill switch is still there."""
    install(root)
    assert root.sh(f"echo 'broken [' >> {CONFFILE}").returncode == 0
    res = root.run(["dpkg", "-r", "atlantic"])
    assert res.returncode != 0
    assert "so the package stays installed" in res.stderr
    assert package_state(root).endswith(f" ok installed {__version__}")
    assert root.run(["atlantic", "version"]).returncode == 0


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
