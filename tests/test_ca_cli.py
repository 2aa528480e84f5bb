"""`atlantic ca` as a user meets it: init, export, status, install and uninstall.

Most tests point the CA and the trust store at temporary directories (ATLANTIC_CA_DIR,
ATLANTIC_TRUST_DIR: then update-ca-certificates is not run). The real trust store is
exercised only in a throwaway root (tests/throwaway_root.py: an overlay of this machine's
/ in private namespaces), where the real update-ca-certificates rebuilds the overlay's
bundle; the host's bundle is checked unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from atlantic.client import ca as ca_cli

ATLANTIC = [sys.executable, "-m", "atlantic"]
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture
def dirs(tmp_path) -> SimpleNamespace:
    """A CA directory, a trust directory and an empty config, all temporary."""
    config = tmp_path / "atlantic.toml"
    config.write_text("")
    config.chmod(0o600)
    return SimpleNamespace(ca=tmp_path / "ca", trust=tmp_path / "trust", config=config, tmp=tmp_path)


def run(dirs: SimpleNamespace, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    argv = [*ATLANTIC, "ca", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {**os.environ, "ATLANTIC_CA_DIR": str(dirs.ca), "ATLANTIC_TRUST_DIR": str(dirs.trust),
           "ATLANTIC_CONFIG": str(dirs.config)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def fingerprint_of(dirs) -> str:
    res = run(dirs, "status")
    return next(line for line in res.stdout.splitlines() if line.startswith("fingerprint:"))


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1
    assert res.stderr.startswith("atlantic: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def test_help_lists_the_ca_commands():
    """`atlantic --help` names `ca`; `atlantic ca --help` names its five commands."""
    assert " ca " in subprocess.run([*ATLANTIC, "--help"], capture_output=True, text=True, timeout=60).stdout
    out = subprocess.run([*ATLANTIC, "ca", "--help"], capture_output=True, text=True, timeout=60).stdout
    for word in ("init", "export", "install", "uninstall", "status", "[tls]"):
        assert word in out


def test_init_export_status_in_temporary_directories(dirs):
    """init writes ca.key (0600) and ca.pem; export prints ca.pem; status shows subject,
    fingerprint, permitted names, expiry and that it is not installed."""
    res = run(dirs, "init", "--domain", "*.example.com", "-d", "video.example.org")
    assert res.returncode == 0, res.stderr
    assert "example.com, video.example.org" in res.stdout and "atlantic ca install" in res.stdout
    assert (dirs.ca / "ca.key").stat().st_mode & 0o777 == 0o600
    exported = run(dirs, "export")
    assert exported.returncode == 0 and exported.stdout.encode() == (dirs.ca / "ca.pem").read_bytes()
    assert run(dirs, "export", "--out", str(dirs.tmp / "out.pem")).returncode == 0
    assert (dirs.tmp / "out.pem").read_bytes() == (dirs.ca / "ca.pem").read_bytes()
    status = run(dirs, "status")
    assert status.returncode == 0
    for text in ("O=Atlantic", "fingerprint: SHA256 ", "permits:     example.com, video.example.org",
                 "in 36", "not installed"):
        assert text in status.stdout


def test_init_keeps_a_fitting_ca_and_renews_it_when_the_list_changes(dirs):
    """init again with the same list keeps the CA; --force or another list makes a new one."""
    run(dirs, "init", "-d", "*.example.com")
    first = fingerprint_of(dirs)
    res = run(dirs, "init", "-d", "example.com")
    assert res.returncode == 0 and "already fits" in res.stdout
    assert fingerprint_of(dirs) == first
    res = run(dirs, "init", "-d", "*.example.net")
    assert res.returncode == 0 and "list changed" in res.stdout
    second = fingerprint_of(dirs)
    assert second != first
    assert run(dirs, "init", "--force", "-d", "*.example.net").returncode == 0
    assert fingerprint_of(dirs) != second


def test_init_replaces_an_installed_ca_in_the_trust_store(dirs):
    """After install, a new CA (list changed) replaces the trusted one at once."""
    run(dirs, "init", "-d", "*.example.com")
    assert run(dirs, "install").returncode == 0
    assert "installed (" in run(dirs, "status").stdout
    res = run(dirs, "init", "-d", "*.example.net")
    assert "Replaced the old CA in the trust store" in res.stdout
    assert (dirs.trust / "atlantic-local-ca.crt").read_bytes() == (dirs.ca / "ca.pem").read_bytes()


def test_status_names_an_older_installed_ca(dirs):
    """A trust-store file holding another CA is reported as older, with what to run."""
    run(dirs, "init", "-d", "*.example.com")
    dirs.trust.mkdir()
    (dirs.trust / "atlantic-local-ca.crt").write_text("-----BEGIN CERTIFICATE-----\nold\n")
    assert "an older CA is installed" in run(dirs, "status").stdout


@pytest.mark.parametrize("args, text", [
    (("init",), "no domains to intercept"),
    (("init", "-d", "10.0.0.1"), "IP address"),
    (("init", "-d", "*.com"), "top-level domain"),
    (("status",), "no local CA yet: run `sudo atlantic ca init`"),
    (("export",), "no local CA yet"),
    (("install",), "no local CA yet"),
])
def test_mistakes_are_one_line_errors(dirs, args, text):
    """Each mistake is one line on stderr saying what to do, exit status 1."""
    assert text in one_line_error(run(dirs, *args))


def test_an_unsafe_key_is_one_line_error(dirs):
    """A CA key readable by others makes init and install fail in one line naming 0600."""
    run(dirs, "init", "-d", "*.example.com")
    (dirs.ca / "ca.key").chmod(0o644)
    assert "0600" in one_line_error(run(dirs, "init", "-d", "*.example.com"))
    assert "0600" in one_line_error(run(dirs, "install"))


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another user needs root")
@pytest.mark.parametrize("command", ["init", "install", "uninstall"])
def test_changing_commands_need_root(dirs, command):
    """init, install and uninstall refuse non-root in one line naming sudo."""
    dirs.tmp.chmod(0o755)
    dirs.config.chmod(0o644)
    assert f"sudo atlantic ca {command}" in one_line_error(run(dirs, command, user="65534"))


def test_uninstall_removes_every_trace_and_is_safe_twice(dirs):
    """uninstall removes the trust-store file, the key, the certificate and the directory;
    a second run says there is nothing to remove."""
    run(dirs, "init", "-d", "*.example.com")
    run(dirs, "install")
    res = run(dirs, "uninstall")
    assert res.returncode == 0 and "Removed the local CA" in res.stdout
    assert not dirs.ca.exists() and list(dirs.trust.iterdir()) == []
    again = run(dirs, "uninstall")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_uninstall_leaves_other_files_in_the_ca_directory(dirs):
    """A directory that holds files not Atlantic's is left (only ours are deleted)."""
    run(dirs, "init", "-d", "*.example.com")
    (dirs.ca / "notes.txt").write_text("mine")
    res = run(dirs, "uninstall")
    assert res.returncode == 0 and "left in place" in res.stderr
    assert sorted(os.listdir(dirs.ca)) == ["notes.txt"]


def test_config_tls_section_is_read_when_present(monkeypatch):
    """[tls] intercept and ca_dir come from the config when it has them (getattr fallbacks);
    $ATLANTIC_CA_DIR wins; without the section: no domains and /var/lib/atlantic/ca."""
    cfg = SimpleNamespace(tls=SimpleNamespace(intercept=("*.example.com",), ca_dir="/srv/ca"))
    monkeypatch.delenv("ATLANTIC_CA_DIR", raising=False)
    assert ca_cli.configured_domains(cfg) == ("*.example.com",)
    assert ca_cli.ca_dir(cfg) == Path("/srv/ca")
    assert ca_cli.configured_domains(SimpleNamespace()) == ()
    assert ca_cli.ca_dir(SimpleNamespace()) == Path("/var/lib/atlantic/ca")
    monkeypatch.setenv("ATLANTIC_CA_DIR", "/elsewhere")
    assert ca_cli.ca_dir(cfg) == Path("/elsewhere")


def test_init_takes_the_domains_from_the_config_file(dirs):
    """Without --domain, init uses [tls] intercept of the config (once client/config.py reads it)."""
    dirs.config.write_text('[tls]\nintercept = ["*.example.com"]\n')
    check = subprocess.run([*ATLANTIC, "config", "check", str(dirs.config)], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"client/config.py does not read [tls] yet: {check.stderr.strip()}")
    res = run(dirs, "init")
    assert res.returncode == 0, res.stderr
    assert "fits [tls] intercept" in run(dirs, "status").stdout


# -- the real trust store, in a throwaway root ------------------------------------------------

# Inside the root: a leaf for video.example.com verified against the system bundle.
VERIFY = (
    "from datetime import datetime, UTC; from atlantic.forwarder.localca import LocalCA; "
    "import sys; ca = LocalCA.load('/var/lib/atlantic/ca'); "
    "sys.stdout.buffer.write(ca.leaf_for('video.example.com', datetime.now(UTC))[0])"
)
ROOT_SCRIPT = f"""
set -eu
: > /tmp/atlantic.toml; export ATLANTIC_CONFIG=/tmp/atlantic.toml
A="{sys.executable} -m atlantic"
bundle=/etc/ssl/certs/ca-certificates.crt
$A ca init --force -d '*.example.com'
{sys.executable} -c "{VERIFY}" > /tmp/leaf.pem
cp /var/lib/atlantic/ca/ca.pem /tmp/ca.pem
echo "before: $(openssl verify -CAfile $bundle -verify_hostname video.example.com /tmp/leaf.pem 2>&1 | tr '\\n' ' ')"
$A ca install
echo "installed: $(openssl verify -CAfile $bundle -verify_hostname video.example.com /tmp/leaf.pem 2>&1 | tr '\\n' ' ')"
echo "capath: $(openssl verify -CApath /etc/ssl/certs -verify_hostname video.example.com /tmp/leaf.pem 2>&1 | tr '\\n' ' ')"
$A ca status | grep '^trust store'
$A ca uninstall
echo "after: $(openssl verify -CAfile $bundle -verify_hostname video.example.com /tmp/leaf.pem 2>&1 | tr '\\n' ' ')"
echo "links: $(grep -rl "$(sed -n 2p /tmp/ca.pem)" /etc/ssl/certs/ | wc -l)"
echo "files: $(ls /usr/local/share/ca-certificates/atlantic-local-ca.crt /var/lib/atlantic/ca 2>&1 | grep -vc 'No such file')"
"""


@pytest.mark.lab_local
def test_install_and_uninstall_with_the_real_update_ca_certificates(tmp_path):
    """In a throwaway root: install makes the system bundle vouch for a minted leaf (OpenSSL,
    by file and by hashed directory), uninstall leaves no trust and no file behind; the host's
    own bundle is unchanged and no mount is left."""
    if os.geteuid() != 0:
        pytest.skip("the throwaway root needs root (unshare, mount, chroot)")
    from throwaway_root import ThrowawayRoot

    host_before = hashlib.sha256(HOST_BUNDLE.read_bytes()).hexdigest() if HOST_BUNDLE.exists() else ""
    (tmp_path / "debs").mkdir()
    root = ThrowawayRoot(tmp_path / "root", tmp_path / "debs")
    try:
        res = root.sh(ROOT_SCRIPT)
    finally:
        leftover = root.mounts()
        root.remove()
    assert leftover == []
    assert res.returncode == 0, res.stdout + res.stderr
    lines = {key: value.strip() for key, value in
             (line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line and not line.startswith(" "))}
    assert "unable to get local issuer certificate" in lines["before"]
    assert lines["installed"].endswith(": OK") and lines["capath"].endswith(": OK")
    assert lines["trust store"].startswith("installed (/usr/local/share/ca-certificates/atlantic-local-ca.crt)")
    assert "unable to get local issuer certificate" in lines["after"]
    assert lines["links"] == "0" and lines["files"] == "0"
    host_after = hashlib.sha256(HOST_BUNDLE.read_bytes()).hexdigest() if HOST_BUNDLE.exists() else ""
    assert host_after == host_before
