"""Intercepted HTTPS end to end in the lab (issue 13): a listed name's TLS is terminated with
the local CA and its requests ride one pooled, verified origin connection through the real
Squid (HTTP/1.1) and nghttpx (HTTP/2); an unlisted name still sees the origin's own
certificate; an origin the daemon cannot verify reaches the application as a 502 naming
the reason, never as a certificate that hides it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from atlantic_lab import atlantic, ns_run, status
from conftest import LAB_HEALTH

pytestmark = pytest.mark.lab

LISTED = "www.origin.test"  # resolved only at the exit node; the origin's certificate covers it
UNLISTED = "origin.test"


@pytest.fixture
def intercepting(lab, tmp_path):
    """``start(proxy_url, proxy_ca=None, origin_ca=True)``: a local CA for LISTED, then Atlantic
    up with [tls] intercept; yields the CA's PEM path. Always down after."""
    started = []

    def start(url: str, proxy_ca: str | None = None, origin_ca: bool = True) -> str:
        ca_dir = tmp_path / "ca"
        cfg = tmp_path / "atlantic.toml"
        cfg.touch(mode=0o600)  # the URL holds the proxy password
        cfg.write_text(f'[upstream]\nurl = "{url}"\n' + (f'ca_file = "{proxy_ca}"\n' if proxy_ca else "")
                       + f'[tls]\nintercept = ["{LISTED}"]\nca_dir = "{ca_dir}"\n'
                       + (f'origin_ca_file = "{lab.ca_file}"\n' if origin_ca else "") + LAB_HEALTH)
        res = atlantic(lab, "ca", "init", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        atlantic(lab, "down")
        res = atlantic(lab, "up", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        started.append(True)
        return str(ca_dir / "ca.pem")

    yield start
    if started:
        res = atlantic(lab, "down")
        assert res.returncode == 0, res.stderr


def curl(lab, url: str, cacert: str, *extra: str) -> subprocess.CompletedProcess:
    """A new curl process in the client namespace trusting only ``cacert``; body on stdout."""
    return ns_run(lab.client_ns, ["curl", "-sS", "--max-time", "60", "--noproxy", "*", "--cacert", cacert,
                                  *extra, url], timeout=70)


def _fetch_2mb_times(lab, cacert: str, n: int, *extra: str) -> None:
    for _ in range(n):
        r = curl(lab, f"https://{LISTED}/2mb", cacert, *extra)
        assert r.returncode == 0, r.stderr.decode()[-300:]
        assert hashlib.sha256(r.stdout).hexdigest() == lab.sha256_2mb


@pytest.mark.parametrize("proxy", ["squid", "nghttpx"])
def test_listed_name_is_terminated_and_new_connections_ride_one_origin_connection(lab, intercepting, proxy):
    """5 curls (a new process each, trusting only Atlantic's CA): bodies intact, one origin TLS
    connection opened through the proxy and reused by the other four."""
    url, proxy_ca = (lab.proxy_url, None) if proxy == "squid" else (lab.h2_proxy_url, lab.ca_file)
    cacert = intercepting(url, proxy_ca)
    _fetch_2mb_times(lab, cacert, 5)
    st = status(lab)
    tls, pool = st["tls"], st["pool"]
    assert tls["terminated"] >= 5, tls
    assert pool["origin_tls_opened"] == 1 and pool["origin_tls_reused"] >= 4, pool


def test_http2_application_is_served_over_the_terminated_connection(lab, intercepting):
    """curl --http2 negotiates h2 with Atlantic and gets the body intact over it."""
    cacert = intercepting(lab.proxy_url)
    r = curl(lab, f"https://{LISTED}/2mb", cacert, "--http2", "-o", "/dev/stdout", "-w", "%{stderr}%{http_version}")
    assert r.returncode == 0, r.stderr.decode()[-300:]
    assert r.stderr.decode().strip() == "2"
    assert hashlib.sha256(r.stdout).hexdigest() == lab.sha256_2mb


def test_unlisted_name_still_sees_the_origins_own_certificate(lab, intercepting):
    """An unlisted name is tunnelled end to end: Atlantic's CA alone fails (curl 60), the lab CA works."""
    cacert = intercepting(lab.proxy_url)
    refused = curl(lab, f"https://{UNLISTED}/small", cacert)
    assert refused.returncode == 60, refused.stderr.decode()
    own = curl(lab, f"https://{UNLISTED}/small", lab.ca_file)
    assert own.returncode == 0, own.stderr.decode()


def test_origin_the_daemon_cannot_verify_is_a_502_naming_the_reason(lab, intercepting):
    """Without the lab's CA for origins, the origin's certificate fails verification in the
    daemon: the application gets a 502 whose body says so; nothing is served unverified."""
    cacert = intercepting(lab.proxy_url, origin_ca=False)
    r = curl(lab, f"https://{LISTED}/small", cacert, "-w", "%{stderr}%{http_code}")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().strip() == "502"
    assert b"certificate verify failed" in r.stdout, r.stdout[:300]


def test_the_ca_cannot_vouch_for_an_unlisted_name(lab, intercepting, tmp_path):
    """A leaf for an unlisted name, signed with the CA's own key, fails verification (name
    constraints): even a stolen key cannot impersonate other sites."""
    cacert = intercepting(lab.proxy_url)
    code = (
        "import sys, datetime as d; from pathlib import Path; "
        "from cryptography import x509; from cryptography.hazmat.primitives import hashes, serialization; "
        "from cryptography.hazmat.primitives.asymmetric import ec; from cryptography.x509.oid import NameOID; "
        "ca_dir = Path(sys.argv[1]); "
        "ca = x509.load_pem_x509_certificate((ca_dir / 'ca.pem').read_bytes()); "
        "key = serialization.load_pem_private_key((ca_dir / 'ca.key').read_bytes(), None); "
        "leaf_key = ec.generate_private_key(ec.SECP256R1()); now = d.datetime.now(d.timezone.utc); "
        "name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'bank.example')]); "
        "cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject)"
        ".public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())"
        ".not_valid_before(now).not_valid_after(now + d.timedelta(days=1))"
        ".add_extension(x509.SubjectAlternativeName([x509.DNSName('bank.example')]), False)"
        ".sign(key, hashes.SHA256())); "
        "sys.stdout.buffer.write(cert.public_bytes(serialization.Encoding.PEM))")
    leaf = tmp_path / "forged.pem"
    leaf.write_bytes(subprocess.run([sys.executable, "-c", code, str(tmp_path / "ca")], capture_output=True,
                                    check=True, timeout=60).stdout)
    r = subprocess.run(["openssl", "verify", "-CAfile", cacert, str(leaf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "permitted subtree violation" in r.stdout + r.stderr


def test_headless_chromium_trusting_the_ca_in_nss_speaks_http2_through_atlantic(lab, intercepting, tmp_path):
    """Chromium (headless, its own NSS store holding Atlantic's CA as a user would add it with
    certutil) loads a listed https page over HTTP/2 terminated by Atlantic."""
    cacert = intercepting(lab.proxy_url)
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for argv in (["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"],
                 ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "atlantic", "-i", cacert]):
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    r = ns_run(lab.client_ns, ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                               f"https://{LISTED}/small"], timeout=90, env={**os.environ, "HOME": str(home)})
    assert b"atlantic-lab small response" in r.stdout, (r.stdout[-300:], r.stderr[-500:])
    tls = status(lab)["tls"]
    assert tls["h2"] >= 1, tls
