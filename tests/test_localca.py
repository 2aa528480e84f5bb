"""The local CA (forwarder/localca.py): name constraints that real verifiers enforce (OpenSSL
and cryptography), leaves, the key file's safety, renewal, the leaf cache, and a real TLS
handshake on loopback. Everything lives in pytest's temporary directories."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atlantic.forwarder.localca import (
    LEAF_CACHE_SIZE,
    LocalCA,
    LocalCAError,
    build_leaf,
    constrained_domains,
    normalize_domains,
    renewal_reason,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DOMAINS = ("*.example.com", "video.example.org")


@pytest.fixture
def ca(tmp_path) -> LocalCA:
    return LocalCA.create(tmp_path / "ca", DOMAINS, NOW, host="testhost")


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def _ip_leaf(ca: LocalCA, address: str) -> x509.Certificate:
    """A leaf for an IP address, signed with the CA key directly (minting refuses it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ca._key, hashes.SHA256()))


def _bypass_leaf(ca: LocalCA, name: str) -> x509.Certificate:
    """A leaf for ``name`` signed with the CA key directly, past the minting check."""
    return build_leaf(ca.cert, ca._key, name, ec.generate_private_key(ec.SECP256R1()), NOW)


def openssl_verify(tmp_path, ca: LocalCA, leaf_pem: bytes, *, host: str | None = None,
                   ip: str | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "trust.pem").write_bytes(ca.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf_pem)
    argv = ["openssl", "verify", "-CAfile", str(tmp_path / "trust.pem"), "-purpose", "sslserver",
            "-attime", str(int(NOW.timestamp()))]
    argv += ["-verify_hostname", host] if host else []
    argv += ["-verify_ip", ip] if ip else []
    return subprocess.run([*argv, str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=30)


def crypto_verify(ca: LocalCA, cert: x509.Certificate, subject) -> str:
    """'ok' or the error cryptography's RFC 5280 / CA/B verifier gives for ``cert``."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    verifier = PolicyBuilder().store(Store([ca.cert])).time(NOW).build_server_verifier(subject)
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        return str(exc)
    return "ok"


# -- the CA certificate ----------------------------------------------------------------

def test_ca_is_a_pathlen0_ca_constrained_to_exactly_the_listed_domains(ca):
    """The CA: CA:true pathlen 0, keyCertSign+cRLSign, critical NameConstraints permitting the
    listed DNS subtrees only and excluding every IPv4 and IPv6 address; EC P-256; ~1 year."""
    ext = ca.cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.DNSName("example.com"), x509.DNSName("video.example.org")]
    assert set(nc.value.excluded_subtrees) == {x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                                               x509.IPAddress(ipaddress.ip_network("::/0"))}
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert.public_key().curve.name == "secp256r1"
    subject = ca.cert.subject.rfc4514_string()
    assert "O=Atlantic" in subject and "testhost" in subject
    assert ca.cert.not_valid_after_utc - NOW == timedelta(days=365)
    assert constrained_domains(ca.cert) == ("example.com", "video.example.org") == ca.domains


def test_each_ca_has_its_own_key_and_random_serial(tmp_path):
    """Two CAs made at the same moment differ in key and serial number."""
    a = LocalCA.create(tmp_path / "a", DOMAINS, NOW)
    b = LocalCA.create(tmp_path / "b", DOMAINS, NOW)
    assert a.cert.serial_number != b.cert.serial_number
    assert a.cert.public_key() != b.cert.public_key()


def test_wildcard_and_bare_domain_name_the_same_subtree():
    """"*.example.com" and "example.com" both permit the subtree example.com (RFC 5280)."""
    assert normalize_domains(["*.Example.COM", "example.com.", "a.example.org"]) == ("a.example.org", "example.com")


@pytest.mark.parametrize("bad", ["", "1.2.3.4", "::1", "[::1]", "com", "*.com", "a.*.example.com", "*",
                                 "exa mple.com", "ünï.example", "-bad.example.com", "10.0.0.300"])
def test_unusable_domains_are_refused_in_one_line(bad):
    """An address, a top-level domain, a misplaced wildcard or a non-name is refused in one line."""
    with pytest.raises(ValueError) as info:
        normalize_domains([bad])
    assert "\n" not in str(info.value)


# -- verification by real verifiers ----------------------------------------------------

@pytest.mark.parametrize("name", ["video.example.com", "example.com", "a.b.example.com", "video.example.org"])
def test_leaf_for_a_listed_name_verifies_with_openssl_and_cryptography(tmp_path, ca, name):
    """A minted leaf verifies against ca.pem alone, for its name, in OpenSSL and cryptography."""
    from cryptography.x509.verification import DNSName

    cert_pem, _ = ca.leaf_for(name, NOW)
    res = openssl_verify(tmp_path, ca, cert_pem, host=name)
    assert res.returncode == 0 and ": OK" in res.stdout, res.stdout + res.stderr
    assert crypto_verify(ca, x509.load_pem_x509_certificate(cert_pem), DNSName(name)) == "ok"


@pytest.mark.parametrize("name", ["evil.org", "notexample.com", "example.org", "other.video.example.org.evil.net"])
def test_leaf_for_an_unlisted_name_fails_on_the_name_constraints(tmp_path, ca, name):
    """Even signed with the CA key (bypassing the minting check), a leaf for another name is
    refused by OpenSSL ("permitted subtree violation") and by cryptography."""
    from cryptography.x509.verification import DNSName

    leaf = _bypass_leaf(ca, name)
    res = openssl_verify(tmp_path, ca, _pem(leaf), host=name)
    assert res.returncode != 0
    assert "permitted subtree violation" in res.stdout + res.stderr
    assert "no permitted name constraints matched" in crypto_verify(ca, leaf, DNSName(name))


@pytest.mark.parametrize("address", ["127.0.0.1", "93.184.216.34", "::1"])
def test_leaf_for_an_ip_address_fails_on_the_excluded_subtrees(tmp_path, ca, address):
    """A leaf with an IP SAN signed by the CA is refused: the CA excludes 0.0.0.0/0 and ::/0."""
    from cryptography.x509.verification import IPAddress

    leaf = _ip_leaf(ca, address)
    res = openssl_verify(tmp_path, ca, _pem(leaf), ip=address)
    assert res.returncode != 0
    assert "excluded subtree violation" in res.stdout + res.stderr
    assert "excluded name constraint matched" in crypto_verify(ca, leaf, IPAddress(ipaddress.ip_address(address)))


# -- minting -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["evil.org", "notexample.com", "127.0.0.1", "::1", "*.example.com", "com", ""])
def test_minting_refuses_unlisted_names_addresses_and_wildcards(ca, name):
    """leaf_for/server_context_for refuse, in one line, any name the CA may not vouch for."""
    with pytest.raises(ValueError) as info:
        ca.server_context_for(name, NOW)
    assert "\n" not in str(info.value)
    assert not ca.permits(name)
    assert ca.cached_names() == []


def test_leaf_carries_one_name_server_auth_and_a_short_life(ca):
    """The leaf: P-256, SAN = the name, CA:false, digitalSignature, serverAuth, AKI = CA's SKI,
    valid from an hour before now (skewed clocks) for 7 days."""
    cert = x509.load_pem_x509_certificate(ca.leaf_for("Video.Example.com.", NOW)[0])
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("video.example.com")]
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.not_valid_before_utc == NOW - timedelta(hours=1)
    assert cert.not_valid_after_utc == NOW + timedelta(days=7)
    assert cert.public_key().curve.name == "secp256r1"


def test_leaf_never_outlives_the_ca_and_an_expired_ca_mints_nothing(tmp_path):
    """Near the CA's end a leaf ends with it; after the end, minting is refused in one line."""
    short = LocalCA.create(tmp_path / "ca", DOMAINS, NOW, validity=timedelta(days=2))
    cert = x509.load_pem_x509_certificate(short.leaf_for("a.example.com", NOW)[0])
    assert cert.not_valid_after_utc == short.not_after
    with pytest.raises(ValueError, match="expired"):
        short.leaf_for("b.example.com", NOW + timedelta(days=3))


def test_leaf_cache_is_a_bounded_lru(tmp_path):
    """The cache keeps the most recently used leaves up to its bound (default 1024)."""
    assert LEAF_CACHE_SIZE == 1024
    ca = LocalCA.create(tmp_path / "ca", DOMAINS, NOW)
    ca.cache_size = 3
    for name in ("a", "b", "c"):
        ca.leaf_for(f"{name}.example.com", NOW)
    ca.leaf_for("a.example.com", NOW)  # a is used again: b is now the oldest
    ca.leaf_for("d.example.com", NOW)
    assert ca.cached_names() == ["c.example.com", "a.example.com", "d.example.com"]
    assert ca.minted == 4
    assert "leaves=3 minted=4" in repr(ca)


def test_leaf_is_reused_then_minted_again_a_day_before_it_ends(ca):
    """The same leaf (and SSLContext) is served for six days; after that, a new one."""
    first = ca.leaf("video.example.com", NOW)
    ctx = ca.server_context_for("video.example.com", NOW)
    later = NOW + timedelta(days=6) - timedelta(seconds=1)
    assert ca.leaf("video.example.com", later) is first
    assert ca.server_context_for("video.example.com", later) is ctx
    renewed = ca.leaf("video.example.com", NOW + timedelta(days=6))
    assert renewed is not first and renewed.cert_pem != first.cert_pem
    assert ca.server_context_for("video.example.com", NOW + timedelta(days=6)) is not ctx
    assert ca.minted == 2


def test_contexts_are_cached_per_alpn_list(ca):
    """One SSLContext per (name, ALPN list): asking twice returns the same object."""
    h2 = ca.server_context_for("video.example.com", NOW)
    h1 = ca.server_context_for("video.example.com", NOW, alpn=("http/1.1",))
    assert h2 is ca.server_context_for("video.example.com", NOW) and h1 is not h2
    assert ca.minted == 1


# -- the directory -------------------------------------------------------------------------

def test_key_is_0600_and_certificate_0644_even_with_an_open_umask(tmp_path):
    """ca.key is created 0600 (never wider, whatever the umask), ca.pem 0644, both root's."""
    old = os.umask(0)
    try:
        LocalCA.create(tmp_path / "ca", DOMAINS, NOW)
    finally:
        os.umask(old)
    key, cert = (tmp_path / "ca" / "ca.key").stat(), (tmp_path / "ca" / "ca.pem").stat()
    assert key.st_mode & 0o777 == 0o600 and cert.st_mode & 0o777 == 0o644
    assert key.st_uid == os.geteuid()
    assert sorted(os.listdir(tmp_path / "ca")) == ["ca.key", "ca.pem"]


def test_load_gives_back_the_same_ca(ca):
    """load() reads what create() wrote: same certificate, same domains, and it mints."""
    loaded = LocalCA.load(ca.directory)
    assert loaded.cert == ca.cert and loaded.domains == ca.domains
    assert loaded.leaf_for("video.example.com", NOW)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_a_key_others_can_read(ca, mode):
    """A key readable by group or others is refused with one line saying what to do."""
    os.chmod(ca.directory / "ca.key", mode)
    with pytest.raises(LocalCAError) as info:
        LocalCA.load(ca.directory)
    assert "0600" in str(info.value) and "atlantic ca init --force" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_accepts_a_0400_key(ca):
    """A read-only key (0400) is as private as 0600 and is accepted."""
    os.chmod(ca.directory / "ca.key", 0o400)
    assert LocalCA.load(ca.directory).domains == ca.domains


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_load_refuses_a_key_not_owned_by_root(ca):
    """Running as root, a key owned by another user is refused."""
    os.chown(ca.directory / "ca.key", 65534, 65534)
    with pytest.raises(LocalCAError, match="root's"):
        LocalCA.load(ca.directory)


def test_load_refuses_a_symlinked_key(ca, tmp_path):
    """ca.key as a symlink is not followed (O_NOFOLLOW)."""
    real = tmp_path / "elsewhere.key"
    os.rename(ca.directory / "ca.key", real)
    os.symlink(real, ca.directory / "ca.key")
    with pytest.raises(LocalCAError, match="symlink"):
        LocalCA.load(ca.directory)


def test_load_refuses_a_key_that_does_not_match_the_certificate(ca, tmp_path):
    """A key from another CA beside this ca.pem is refused (a half-finished replacement)."""
    other = LocalCA.create(tmp_path / "other", DOMAINS, NOW)
    os.replace(other.directory / "ca.key", ca.directory / "ca.key")
    with pytest.raises(LocalCAError, match="does not match"):
        LocalCA.load(ca.directory)


def test_missing_ca_says_to_run_init(tmp_path):
    """No CA yet: one line naming `atlantic ca init`."""
    with pytest.raises(LocalCAError, match="atlantic ca init"):
        LocalCA.load(tmp_path / "none")


# -- renewal ---------------------------------------------------------------------------------

def test_renewal_reason_follows_the_list_and_the_expiry(ca):
    """Same list (any spelling): no renewal; another list or a CA within 30 days of its end: renew."""
    assert renewal_reason(ca.cert, ("example.com", "video.example.org."), NOW) is None
    assert "list changed" in renewal_reason(ca.cert, ("*.example.com",), NOW)
    assert "list changed" in renewal_reason(ca.cert, (*DOMAINS, "example.net"), NOW)
    assert "expires" in renewal_reason(ca.cert, DOMAINS, NOW + timedelta(days=340))
    assert "expired" in renewal_reason(ca.cert, DOMAINS, NOW + timedelta(days=400))


def test_ensure_keeps_a_fitting_ca_and_makes_a_new_key_when_the_list_changes(ca):
    """ensure(): the same CA while the list fits; a new CA with a new key (and the new
    constraints) when it changes; the new one is what load() then reads."""
    same, why = LocalCA.ensure(ca.directory, DOMAINS, NOW + timedelta(days=1))
    assert why is None and same.cert == ca.cert
    new, why = LocalCA.ensure(ca.directory, ("*.example.net",), NOW + timedelta(days=1))
    assert "list changed" in why
    assert new.cert.public_key() != ca.cert.public_key() and new.domains == ("example.net",)
    assert LocalCA.load(ca.directory).cert == new.cert
    with pytest.raises(ValueError):
        new.leaf_for("video.example.com", NOW + timedelta(days=1))


def test_ensure_creates_a_missing_ca(tmp_path):
    """ensure() on an empty directory makes the CA and says why."""
    ca, why = LocalCA.ensure(tmp_path / "ca", DOMAINS, NOW)
    assert "no local CA" in why and ca.domains == ("example.com", "video.example.org")


# -- a real handshake on loopback -------------------------------------------------------------

async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> str:
    async def serve(reader, writer):
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                           server_hostname=server_hostname)
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            data = await reader.read()
            writer.close()
            return f"{alpn} {data.decode()}"
    finally:
        server.close()
        await server.wait_closed()


def _client(tmp_path, ca: LocalCA) -> ssl.SSLContext:
    (tmp_path / "trust.pem").write_bytes(ca.cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.load_verify_locations(cafile=tmp_path / "trust.pem")  # this CA only
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def test_tls_handshake_on_loopback_with_a_minted_leaf(tmp_path):
    """A client trusting only ca.pem, checking the host name, completes a handshake with a
    server using server_context_for("video.example.com") (ALPN h2 agreed)."""
    now = datetime.now(UTC)
    ca = LocalCA.create(tmp_path / "ca", DOMAINS, now)
    result = asyncio.run(_handshake(ca.server_context_for("video.example.com", now),
                                    _client(tmp_path, ca), "video.example.com"))
    assert result == "h2 hello"


def test_tls_handshake_fails_for_another_server_name(tmp_path):
    """The same server, asked for another name by the client, fails the hostname check."""
    now = datetime.now(UTC)
    ca = LocalCA.create(tmp_path / "ca", DOMAINS, now)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
        asyncio.run(_handshake(ca.server_context_for("video.example.com", now),
                               _client(tmp_path, ca), "audio.example.com"))
