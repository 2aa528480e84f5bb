"""Real TLS peers on loopback for the TLS-termination tests (not a test module).

- :func:`origin_pki`: an "origin CA" (what public CAs are to real origins) and a server
  certificate for ``*.example.test`` and ``other.test`` signed by it.
- :class:`TlsOrigin`: the h11 :class:`~http1_peers.Origin` behind TLS (ALPN http/1.1).
- :func:`intercepting`: a Dispatcher over a real ``direct`` UpstreamPool that trusts the
  origin CA, terminating ``*.example.test`` with a local CA made in a temporary directory.
- :func:`resolve_test_names`: ``*.example.test`` and ``other.test`` resolve to 127.0.0.1 in
  this process (the pool connects by name, as it would to a real origin).
- :func:`tls_get`: one HTTPS request with Python's ssl client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from http1_peers import Origin, read_response

from atlantic.forwarder.dispatch import Dispatcher
from atlantic.forwarder.intercept import InterceptPolicy
from atlantic.forwarder.localca import LocalCA
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstream import parse_upstream

TEST_NAMES = (".example.test", "other.test")


@dataclass(frozen=True)
class Pki:
    """Files of the origin's PKI: its CA (to trust) and its server chain and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def origin_pki(directory: Path) -> Pki:
    """An origin CA and a server certificate (``*.example.test``, ``example.test``, ``other.test``)."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Test Origin CA")).issuer_name(_name("Test Origin CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(n) for n in ("*.example.test", "example.test", "other.test")]
    cert = (x509.CertificateBuilder().subject_name(_name("origin.example.test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory / "origin-ca.pem", directory / "origin.pem", directory / "origin.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return pki


class TlsOrigin(Origin):
    """The h11 test origin behind TLS (the origin's own certificate); ALPN http/1.1."""

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.cert_file, pki.key_file)
        self.context.set_alpn_protocols(["http/1.1"])

    async def __aenter__(self) -> TlsOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


@contextlib.contextmanager
def resolve_test_names(monkeypatch):
    """Names under ``example.test`` and ``other.test`` resolve to 127.0.0.1 in this process."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and (host.endswith(TEST_NAMES) or host in ("example.test", "other.test")):
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


def to(port: int):
    """A NAT lookup that sends every flow to 127.0.0.1:``port``."""
    return lambda nat_port: (("127.0.0.1", nat_port), ("127.0.0.1", port))


@contextlib.asynccontextmanager
async def intercepting(directory: Path, lookup, pki: Pki | None, patterns=("*.example.test",), **kw):
    """A Dispatcher terminating ``patterns`` with a fresh local CA in ``directory``, over a
    ``direct`` pool trusting ``pki``'s origin CA (None: the system store only); yields
    (dispatcher, listening port, local CA file)."""
    ca = LocalCA.create(directory / "ca", list(patterns), datetime.now(timezone.utc), host="test")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    origin_ca = str(pki.ca_file) if pki is not None else None
    async with UpstreamPool("direct", warm_tunnels=0, origin_ca_file=origin_ca) as pool:
        d = Dispatcher(parse_upstream("direct"), lookup, pool, idle_timeout=30.0, ca=ca,
                       intercept=InterceptPolicy(patterns), origin_ca_file=origin_ca, **kw)
        await d.serve(listener)
        try:
            yield d, listener.getsockname()[1], directory / "ca" / "ca.pem"
        finally:
            await d.aclose(2.0)
            listener.close()


def client_context(cafile: Path, alpn=("http/1.1",)) -> ssl.SSLContext:
    """What an application that trusts ``cafile`` uses."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


async def tls_get(port: int, name: str, cafile: Path, path: str = "/echo", *, close: bool = True):
    """One GET over TLS to the listener with SNI ``name``: (status, headers, body, peer certificate)."""
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(cafile), server_hostname=name)
    try:
        conn = "Connection: close\r\n" if close else ""
        w.write(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n{conn}\r\n".encode())
        await w.drain()
        status, headers, body, _ = await read_response(r)
        cert = w.get_extra_info("peercert")
        return status, headers, body, cert
    finally:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


def issuer_cn(cert: dict) -> str:
    """The issuer's common name of a certificate as ``getpeercert()`` returns it."""
    return next(v for rdn in cert["issuer"] for k, v in rdn if k == "commonName")
