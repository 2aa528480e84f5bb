"""The lab's certificate authority and server certificates (openssl command line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT_S = 20.0


class PkiError(RuntimeError):
    """openssl failed to make a key or certificate."""


def _openssl(args: list[str], cwd: Path) -> None:
    try:
        r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                           timeout=OPENSSL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PkiError(f"openssl {args[0]} timed out") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise PkiError(f"openssl {args[0]} failed: {last}")


def make_ca(dir_: Path) -> Path:
    """Create a self-signed lab CA (``ca.crt``, ``ca.key``) in *dir_*; return the cert path."""
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-days", "3650", "-subj", "/CN=Atlantic Lab CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-keyout", "ca.key", "-out", "ca.crt"], dir_)
    return dir_ / "ca.crt"


def leaf_extensions(host: str, ip: str) -> str:
    """The X.509 v3 extensions of a server certificate for *host* and *ip*."""
    return (
        # The wildcard covers names only the proxy resolves (www.origin.test, ...).
        f"subjectAltName=DNS:{host},DNS:*.{host},IP:{ip}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )


def make_server_cert(dir_: Path, name: str, host: str, ip: str) -> tuple[Path, Path]:
    """Issue ``<name>.crt``/``<name>.key`` for *host* (and *ip*) signed by the lab CA in *dir_*."""
    ext = dir_ / f"{name}.ext"
    ext.write_text(leaf_extensions(host, ip))
    _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-subj", f"/CN={host}", "-keyout", f"{name}.key", "-out", f"{name}.csr"],
             dir_)
    _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
              "-CAcreateserial", "-days", "825", "-extfile", ext.name, "-out", f"{name}.crt"],
             dir_)
    return dir_ / f"{name}.crt", dir_ / f"{name}.key"


@dataclass(frozen=True, slots=True)
class LabPki:
    """The lab CA and the server certificates, as file paths."""

    ca: Path
    origin_cert: Path
    origin_key: Path
    proxy_cert: Path
    proxy_key: Path


def ensure_pki(cache_dir: Path, origin: tuple[str, str], proxy: tuple[str, str]) -> LabPki:
    """The lab's CA and certs, made once into *cache_dir* and reused (a stable LAB_CA_FILE).

    *origin* and *proxy* are (host name, IP). Built in a temporary dir and renamed into
    place, so a crash never leaves half a PKI.
    """
    d = cache_dir / "pki-v2"  # v2: wildcard names; a new directory so caches renew
    pki = LabPki(d / "ca.crt", d / "origin.crt", d / "origin.key", d / "proxy.crt", d / "proxy.key")
    if all(p.is_file() for p in (pki.ca, pki.origin_cert, pki.origin_key, pki.proxy_cert,
                                  pki.proxy_key)):
        return pki
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pki-", dir=cache_dir))
    try:
        make_ca(tmp)
        make_server_cert(tmp, "origin", *origin)
        make_server_cert(tmp, "proxy", *proxy)
        os.chmod(tmp, 0o755)
        os.chmod(tmp / "ca.crt", 0o644)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pki
