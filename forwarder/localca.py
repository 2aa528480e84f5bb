"""The local certificate authority that TLS termination signs its leaves with.

Opt-in and name-constrained: the CA certificate carries a critical X.509 NameConstraints
extension whose permitted dNSName subtrees are exactly the domains the user listed, and
which excludes every IPv4 and IPv6 address (0.0.0.0/0, ::/0). A verifier that honours
RFC 5280 (OpenSSL, NSS, Chrome, cryptography) therefore refuses any certificate this CA
signs for another name or for an address, even if the key were stolen. Its EKU is
serverAuth only, so it cannot vouch for code or mail either.

Listing "*.example.com" or "example.com" means the same: the subtree example.com, i.e.
the domain itself and every name under it. RFC 5280 dNSName constraints are subtrees,
so the CA cannot express "only this exact name"; both spellings are accepted so the
list reads naturally, and ``permits()`` answers exactly what the constraint allows.

State lives in a persistent directory (default /var/lib/atlantic/ca): ``ca.key`` (EC
P-256, PKCS#8, mode 0600, created with O_EXCL|O_NOFOLLOW so it is never readable by
others, not even for a moment) and ``ca.pem`` (0644). When the list changes the CA is
made anew with a new key (``renewal_reason`` says when; ``LocalCA.ensure`` does it).

Leaves (P-256, SAN = the one name, 7 days, backdated 1 h for skewed clocks) are minted
on demand and kept in a bounded LRU; one is minted again a day before it ends. An
``ssl.SSLContext`` needs its key from a file: it is written to an anonymous memfd (never
on a file system) and loaded through /proc/self/fd. The pure builders take ``now``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atlantic.forwarder.intercept import check_hostname, normalize_pattern

DEFAULT_CA_DIR = Path("/var/lib/atlantic/ca")
KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"
CA_VALIDITY = timedelta(days=365)
CA_RENEW_BEFORE = timedelta(days=30)
LEAF_VALIDITY = timedelta(days=7)
LEAF_BACKDATE = timedelta(hours=1)  # clients whose clocks run a little behind still accept it
LEAF_RENEW_BEFORE = timedelta(days=1)
LEAF_CACHE_SIZE = 1024
DEFAULT_ALPN = ("h2", "http/1.1")


class LocalCAError(Exception):
    """The CA cannot be created or loaded; the message is one line saying what to do."""


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _hostname(name: str, what: str) -> str:
    """``name`` lowercased without a trailing dot, or ValueError if it is no DNS name."""
    return check_hostname(name.strip().lower().rstrip("."), f"{what} {name!r}")


def normalize_domain(pattern: str) -> str:
    """The constraint subtree for one listed domain: "*.example.com" and "example.com" both
    give "example.com" (the domain and every name under it), exactly as the intercept list
    reads them (``intercept.normalize_pattern``). ValueError if unusable."""
    return normalize_pattern(pattern)


def normalize_domains(patterns) -> tuple[str, ...]:
    """Sorted, de-duplicated subtrees for a list of domains (ValueError if empty or bad)."""
    domains = tuple(sorted({normalize_domain(p) for p in patterns}))
    if not domains:
        raise ValueError("no domains to intercept: list at least one, e.g. *.example.com")
    return domains


def is_permitted(name: str, domains: tuple[str, ...]) -> bool:
    """Whether a dNSName subtree constraint over ``domains`` allows the host ``name``."""
    host = name.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def build_ca(key: ec.EllipticCurvePrivateKey, domains: tuple[str, ...], now: datetime, *,
             host: str = "localhost", validity: timedelta = CA_VALIDITY) -> x509.Certificate:
    """The CA certificate (pure but for the random serial): constrained to ``domains``."""
    now = _utc(now)
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atlantic"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Atlantic local CA ({host})"[:64]),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(d) for d in domains],
        excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                           x509.IPAddress(ipaddress.ip_network("::/0"))])
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(constraints, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))


def build_leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
               leaf_key: ec.EllipticCurvePrivateKey, now: datetime, *,
               validity: timedelta = LEAF_VALIDITY) -> x509.Certificate:
    """A server certificate for the one DNS name ``name``, signed by the CA, never
    outliving it. No check of ``name`` here: ``LocalCA`` checks before it calls this."""
    now = _utc(now)
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))


def constrained_domains(cert: x509.Certificate) -> tuple[str, ...]:
    """The permitted dNSName subtrees of a CA certificate (sorted; empty if none)."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted(g.value for g in nc.permitted_subtrees or () if isinstance(g, x509.DNSName)))


def renewal_reason(cert: x509.Certificate, domains: tuple[str, ...], now: datetime, *,
                   renew_before: timedelta = CA_RENEW_BEFORE) -> str | None:
    """Why the CA must be made anew (new key) for the listed ``domains`` at ``now``, or None."""
    have, want = constrained_domains(cert), normalize_domains(domains)
    if have != want:
        return f"the intercept list changed: the CA permitted {', '.join(have) or 'nothing'}, the list is {', '.join(want)}"
    end = cert.not_valid_after_utc
    if _utc(now) >= end - renew_before:
        return f"the CA {'expired' if _utc(now) >= end else 'expires'} on {end:%Y-%m-%d}"
    return None


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated hex, as browsers show it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A minted leaf: PEMs, when to mint it again, and its server contexts by ALPN list."""

    name: str
    cert_pem: bytes
    key_pem: bytes
    renew_at: datetime
    contexts: dict  # tuple(alpn) -> ssl.SSLContext, filled on first use


def server_context(cert_pem: bytes, key_pem_: bytes, alpn: tuple[str, ...] = DEFAULT_ALPN) -> ssl.SSLContext:
    """A server-side SSLContext (TLS 1.2+) holding this certificate and key. The key goes
    through an anonymous memfd: it never touches a file system."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    fd = os.memfd_create("atlantic-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem_ + cert_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return ctx


class LocalCA:
    """A loaded CA: mints leaves for names inside its constraints, caches them (LRU).
    Thread-safe: minting may run in a worker thread."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 directory: Path | None = None, *, cache_size: int = LEAF_CACHE_SIZE):
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise LocalCAError(f"{directory or 'the CA'}: ca.key does not match ca.pem: "
                               "run `sudo atlantic ca init --force` to make a new CA")
        self.cert, self._key, self.directory = cert, key, directory
        self.domains = constrained_domains(cert)
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.cache_size = cache_size
        self._leaves: OrderedDict[str, Leaf] = OrderedDict()
        self._lock = threading.Lock()
        self.minted = 0  # counter: leaves minted (cache misses and renewals)

    def __repr__(self) -> str:
        return f"<LocalCA {', '.join(self.domains)} leaves={len(self._leaves)} minted={self.minted}>"

    @property
    def not_after(self) -> datetime:
        """When the CA certificate ends (UTC)."""
        return self.cert.not_valid_after_utc

    def permits(self, name: str) -> bool:
        """Whether ``name`` lies inside this CA's name constraints (never for an address)."""
        try:
            host = _hostname(name, "name")
        except ValueError:
            return False
        return is_permitted(host, self.domains)

    def leaf(self, name: str, now: datetime) -> Leaf:
        """The cached leaf for ``name``, minted (again) when missing or near its end.
        ValueError (one line) for an address, a wildcard or a name outside the CA's list."""
        host = _hostname(name, "name")
        if not is_permitted(host, self.domains):
            raise ValueError(f"name {host!r} is outside the local CA's domains ({', '.join(self.domains)}): "
                             "add it to [tls] intercept and run `sudo atlantic ca init`")
        now = _utc(now)
        if now >= self.not_after:
            raise ValueError(f"the local CA expired on {self.not_after:%Y-%m-%d}: run `sudo atlantic ca init --force`")
        with self._lock:
            leaf = self._leaves.get(host)
            if leaf is not None and now < leaf.renew_at:
                self._leaves.move_to_end(host)
                return leaf
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = build_leaf(self.cert, self._key, host, leaf_key, now)
        renew_at = max(cert.not_valid_after_utc - LEAF_RENEW_BEFORE, now + (cert.not_valid_after_utc - now) / 2)
        leaf = Leaf(host, cert.public_bytes(serialization.Encoding.PEM), key_pem(leaf_key), renew_at, {})
        with self._lock:
            self._leaves[host] = leaf
            self._leaves.move_to_end(host)
            self.minted += 1
            while len(self._leaves) > self.cache_size:
                self._leaves.popitem(last=False)
        return leaf

    def leaf_for(self, name: str, now: datetime) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) of the leaf for ``name``; see ``leaf``."""
        leaf = self.leaf(name, now)
        return leaf.cert_pem, leaf.key_pem

    def server_context_for(self, name: str, now: datetime,
                           alpn: tuple[str, ...] = DEFAULT_ALPN) -> ssl.SSLContext:
        """A server-side SSLContext presenting the leaf for ``name`` (cached with the leaf)."""
        leaf = self.leaf(name, now)
        key = tuple(alpn)
        ctx = leaf.contexts.get(key)
        if ctx is None:
            ctx = leaf.contexts[key] = server_context(leaf.cert_pem, leaf.key_pem, key)
        return ctx

    def cached_names(self) -> list[str]:
        """Names with a cached leaf, least recently used first."""
        with self._lock:
            return list(self._leaves)

    # -- the directory ---------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | os.PathLike[str] = DEFAULT_CA_DIR) -> LocalCA:
        """Read ``ca.key`` and ``ca.pem``; LocalCAError (one line) when missing, unsafe or broken."""
        directory = Path(directory)
        key_path = directory / KEY_FILE
        try:
            fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LocalCAError(f"{directory}: no local CA yet: run `sudo atlantic ca init`") from None
        except OSError as exc:
            raise LocalCAError(f"{key_path}: cannot be read ({exc.strerror}): run this as root, or "
                               "`sudo atlantic ca init --force` if it is a symlink") from None
        try:
            _check_key_file(key_path, os.fstat(fd))
            with os.fdopen(fd, "rb", closefd=False) as f:
                key_data = f.read()
        finally:
            os.close(fd)
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
            cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
        except (ValueError, TypeError, OSError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise LocalCAError(f"{directory}: the CA cannot be loaded ({why}): "
                               "run `sudo atlantic ca init --force`") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LocalCAError(f"{key_path}: not an EC key: run `sudo atlantic ca init --force`")
        return cls(cert, key, directory)

    @classmethod
    def create(cls, directory: str | os.PathLike[str], domains, now: datetime, *,
               validity: timedelta = CA_VALIDITY, host: str | None = None) -> LocalCA:
        """Make a new CA (new key) for ``domains`` in ``directory``, replacing any old one."""
        domains = normalize_domains(domains)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build_ca(key, domains, now, host=host or os.uname().nodename, validity=validity)
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _write_new(dfd, KEY_FILE, key_pem(key), 0o600)
                _write_new(dfd, CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise LocalCAError(f"{directory}: cannot write the CA ({exc.strerror}): it must be a directory "
                               "(not a symlink) that root can write") from None
        return cls(cert, key, directory)

    @classmethod
    def ensure(cls, directory: str | os.PathLike[str], domains, now: datetime) -> tuple[LocalCA, str | None]:
        """The CA in ``directory`` if it fits ``domains`` at ``now``; else a new one, and why."""
        try:
            ca = cls.load(directory)
        except LocalCAError as exc:
            if (Path(directory) / KEY_FILE).exists():
                raise
            return cls.create(directory, domains, now), str(exc)
        reason = renewal_reason(ca.cert, tuple(domains), now)
        if reason is None:
            return ca, None
        return cls.create(directory, domains, now), reason


def _check_key_file(path: Path, st: os.stat_result) -> None:
    euid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise LocalCAError(f"{path}: not a regular file: run `sudo atlantic ca init --force` to make a new CA")
    if st.st_mode & 0o077 or (euid == 0 and st.st_uid != 0) or st.st_uid not in (0, euid):
        raise LocalCAError(f"{path}: the CA key must be root's with mode 0600 (it is {st.st_mode & 0o777:04o}, "
                           f"uid {st.st_uid}): run `sudo atlantic ca init --force` to make a new CA")


def _write_new(dfd: int, name: str, data: bytes, mode: int) -> None:
    """Write ``name`` in the directory ``dfd`` atomically: a fresh O_EXCL|O_NOFOLLOW file
    created with ``mode`` (never wider), then renamed over the old one."""
    tmp = f".{name}.new"
    try:
        os.unlink(tmp, dir_fd=dfd)  # left by a crash (a symlink is removed, not followed)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    try:
        os.fchmod(fd, mode)  # the umask may narrow it; 0644 for the certificate is meant
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
