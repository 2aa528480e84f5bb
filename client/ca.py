"""``atlantic ca``: the local CA for opt-in TLS termination, and the system trust store.

``init`` makes the CA (forwarder/localca.py) for the domains of ``[tls] intercept`` (or
``--domain``), ``install`` puts its certificate in Debian's trust store
(/usr/local/share/ca-certificates + ``update-ca-certificates``), ``uninstall`` removes every
trace (trust-store file, the bundle rebuilt with ``--fresh``, the key and certificate),
``export`` prints the certificate and ``status`` says what there is.

``ATLANTIC_CA_DIR`` overrides the CA directory (else ``[tls] ca_dir``, else
/var/lib/atlantic/ca) and ``ATLANTIC_TRUST_DIR`` the trust-store directory; with the
latter set, ``update-ca-certificates`` (which reads only the system directory) is not run,
so tests and trials never change this machine's trust.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from atlantic.client.ca_paths import CA_DIR_ENV, CERT_FILE, DEFAULT_CA_DIR, KEY_FILE, ca_dir  # noqa: F401 - re-exported

TRUST_DIR_ENV = "ATLANTIC_TRUST_DIR"
SYSTEM_TRUST_DIR = Path("/usr/local/share/ca-certificates")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TRUST_FILE = "atlantic-local-ca.crt"
UPDATE_TIMEOUT_S = 120.0

ca_app = typer.Typer(
    help="The local CA that lets Atlantic pool HTTPS for the domains you list in \\[tls] intercept "
         "(opt-in; it can only vouch for those names, never for others or for IP addresses).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="Config file (default: $ATLANTIC_CONFIG or /etc/atlantic/atlantic.toml)."),
]


def _fail(message: str) -> None:
    from atlantic.client.cli import fail

    fail(message)


def _require_root(what: str, why: str) -> None:
    if os.geteuid() != 0:
        _fail(f"`atlantic ca {what}` {why} and needs root: run `sudo atlantic ca {what}`")


def _config(path: str | None):
    from atlantic.client.config import ConfigError
    from atlantic.client.config_check import load_config

    try:
        return load_config(path, secrets=False)
    except ConfigError as exc:
        _fail(str(exc))


def configured_domains(cfg) -> tuple[str, ...]:
    """``[tls] intercept`` of a loaded config (empty before that section exists)."""
    return tuple(getattr(getattr(cfg, "tls", None), "intercept", None) or ())


def trust_dir() -> Path:
    """The trust-store directory: $ATLANTIC_TRUST_DIR, else Debian's for local CAs."""
    return Path(os.environ.get(TRUST_DIR_ENV) or SYSTEM_TRUST_DIR)


def _is_system(directory: Path) -> bool:
    return directory.resolve() == SYSTEM_TRUST_DIR.resolve()


def _update_ca_certificates(*args: str) -> None:
    try:
        res = subprocess.run(["update-ca-certificates", *args], capture_output=True, text=True,
                             timeout=UPDATE_TIMEOUT_S, check=False)
    except FileNotFoundError:
        _fail("update-ca-certificates is missing: `sudo apt-get install ca-certificates`, then run this again")
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()[-1]
        _fail(f"update-ca-certificates {' '.join(args)} failed: {last}")


def install_trust(cert_pem: bytes, directory: Path) -> Path:
    """Write the CA certificate to ``directory``/atlantic-local-ca.crt (0644, atomically)
    and, when that is the system directory, rebuild the bundle. Returns the file."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = directory / TRUST_FILE
    tmp = directory / f".{TRUST_FILE}.new"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(cert_pem)
    os.replace(tmp, path)
    if _is_system(directory):
        _update_ca_certificates()  # replaces the old CA's link and bundle entry, if any
    return path


def uninstall_trust(directory: Path) -> bool:
    """Remove the trust-store file and, for the system directory, rebuild everything with
    ``--fresh`` (so no stale link or bundle entry stays). True if a file was removed."""
    path = directory / TRUST_FILE
    existed = path.exists() or path.is_symlink()
    path.unlink(missing_ok=True)
    if _is_system(directory):
        _update_ca_certificates("--fresh")
    return existed


def remove_ca(directory: Path) -> list[Path]:
    """Delete the CA's files and then its directory (only if nothing else is in it)."""
    removed = []
    for name in (KEY_FILE, CERT_FILE, f".{KEY_FILE}.new", f".{CERT_FILE}.new"):
        path = directory / name
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(path)
    try:
        directory.rmdir()
        removed.append(directory)
    except OSError:
        pass  # absent, or holds files that are not ours: left alone
    return removed


def trust_state(cert_pem: bytes, directory: Path, bundle: Path = SYSTEM_BUNDLE) -> str:
    """One line: whether this CA is in the trust store (and, for the system one, the bundle)."""
    path = directory / TRUST_FILE
    try:
        installed = path.read_bytes()
    except OSError:
        return "not installed: run `sudo atlantic ca install`"
    if installed.strip() != cert_pem.strip():
        return f"an older CA is installed ({path}): run `sudo atlantic ca install`"
    if _is_system(directory):
        try:
            in_bundle = cert_pem.strip().decode() in bundle.read_text()
        except OSError:
            in_bundle = False
        if not in_bundle:
            return f"{path} is there but not in {bundle}: run `sudo atlantic ca install`"
    return f"installed ({path})"


def _read_cert(directory: Path):
    from cryptography import x509

    try:
        data = (directory / CERT_FILE).read_bytes()
    except FileNotFoundError:
        _fail(f"{directory}: no local CA yet: run `sudo atlantic ca init`")
    except OSError as exc:
        _fail(f"{directory / CERT_FILE}: cannot be read ({exc.strerror}): run this as root")
    try:
        return data, x509.load_pem_x509_certificate(data)
    except ValueError:
        _fail(f"{directory / CERT_FILE}: not a certificate: run `sudo atlantic ca init --force`")


def _load_ca(directory: Path):
    from atlantic.forwarder.localca import LocalCA, LocalCAError

    try:
        return LocalCA.load(directory)
    except LocalCAError as exc:
        _fail(str(exc))


@ca_app.command("init")
def init(
    domain: Annotated[Optional[list[str]], typer.Option(
        "--domain", "-d", help="A domain to intercept, e.g. *.example.com (the domain and every name "
                               "under it); repeat for more. Default: \\[tls] intercept of the config.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Make a new CA (new key) even if the current one fits.")] = False,
    days: Annotated[int, typer.Option(min=1, max=3650, help="How long the CA is valid.")] = 365,
    config: ConfigOpt = None,
) -> None:
    """Make the local CA for the listed domains (again, with a new key, when the list changed)."""
    from atlantic.forwarder.localca import LocalCA, LocalCAError, normalize_domains, renewal_reason

    _require_root("init", "writes the CA's private key")
    cfg = _config(config)
    wanted = tuple(domain or ()) or configured_domains(cfg)
    if not wanted:
        _fail("no domains to intercept: list them in [tls] intercept of the config, or pass --domain *.example.com")
    try:
        domains = normalize_domains(wanted)
    except ValueError as exc:
        _fail(str(exc))
    directory, now = ca_dir(cfg), datetime.now(timezone.utc)
    reason = "asked with --force" if force else None
    if not force and (directory / KEY_FILE).exists():
        current = _load_ca(directory)
        reason = renewal_reason(current.cert, domains, now)
        if reason is None:
            typer.echo(f"The local CA in {directory} already fits {', '.join(domains)} "
                       f"(until {current.not_after:%Y-%m-%d}); --force makes a new one.")
            return
    try:
        ca = LocalCA.create(directory, domains, now, validity=timedelta(days=days))
    except LocalCAError as exc:
        _fail(str(exc))
    why = f" ({reason})" if reason else ""
    typer.echo(f"Made a new local CA in {directory}{why}: it can vouch for {', '.join(domains)} "
               f"and names under them, until {ca.not_after:%Y-%m-%d}.")
    listed = configured_domains(cfg)
    if domain and listed and normalize_domains(listed) != domains:
        typer.echo("atlantic: warning: [tls] intercept lists other domains; the daemon will make the CA "
                   "again for those", err=True)
    trust = trust_dir()
    if (trust / TRUST_FILE).exists():
        install_trust(ca.cert_pem, trust)
        typer.echo(f"Replaced the old CA in the trust store ({trust / TRUST_FILE}); "
                   "browsers with their own store need it again (`atlantic ca install` shows how).")
    else:
        typer.echo("Trust it with `sudo atlantic ca install`.")


@ca_app.command("export")
def export(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the PEM here instead of stdout.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the CA certificate (PEM), to import it where the trust store is not read."""
    data, _ = _read_cert(ca_dir(_config(config)))
    if out is None:
        typer.echo(data.decode(), nl=False)
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        _fail(f"{out}: cannot be written ({exc.strerror})")
    typer.echo(f"Wrote the local CA certificate to {out}.", err=True)


@ca_app.command("install")
def install(config: ConfigOpt = None) -> None:
    """Trust the CA system-wide (Debian's trust store), and say how to add it to browsers."""
    _require_root("install", "changes the system's trust store")
    ca = _load_ca(ca_dir(_config(config)))
    trust = trust_dir()
    try:
        path = install_trust(ca.cert_pem, trust)
    except OSError as exc:
        _fail(f"{trust}: cannot be written ({exc.strerror})")
    where = "" if _is_system(trust) else " (not the system directory: update-ca-certificates not run)"
    typer.echo(f"Installed the local CA ({', '.join(ca.domains)}) as {path}{where}.")
    typer.echo("Browsers with their own certificate store need it too:\n"
               f"  Chrome/Chromium (per user): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n atlantic -i {path}\n"
               "  Firefox: /etc/firefox/policies/policies.json with "
               f'{{"policies": {{"Certificates": {{"Install": ["{path}"]}}}}}}')


@ca_app.command("uninstall")
def uninstall(config: ConfigOpt = None) -> None:
    """Remove every trace: the trust-store entry (bundle rebuilt), the CA's key and certificate."""
    _require_root("uninstall", "changes the system's trust store")
    directory, trust = ca_dir(_config(config)), trust_dir()
    try:
        had_trust = uninstall_trust(trust)
        removed = remove_ca(directory)
    except OSError as exc:
        _fail(f"cannot remove the local CA ({exc.filename}: {exc.strerror})")
    if not had_trust and not removed:
        typer.echo("No local CA here: nothing to remove.")
        return
    typer.echo(f"Removed the local CA: {', '.join(str(p) for p in removed) or 'no CA files'}"
               f"{'; trust store entry ' + str(trust / TRUST_FILE) if had_trust else ''}.")
    if directory.exists():
        typer.echo(f"atlantic: warning: {directory} holds other files and was left in place", err=True)
    typer.echo("Also remove it from browsers where you added it: certutil -d sql:$HOME/.pki/nssdb -D -n atlantic")


@ca_app.command("status")
def status(config: ConfigOpt = None) -> None:
    """Show the CA: subject, fingerprint, permitted names, expiry, whether it is trusted."""
    from atlantic.forwarder.localca import constrained_domains, fingerprint, normalize_domains, renewal_reason

    cfg = _config(config)
    directory = ca_dir(cfg)
    data, cert = _read_cert(directory)
    now = datetime.now(timezone.utc)
    left = (cert.not_valid_after_utc - now).days
    listed = configured_domains(cfg)
    if not listed:
        fit = "[tls] intercept lists no domains: TLS termination is off"
    else:
        try:
            reason = renewal_reason(cert, normalize_domains(listed), now)
        except ValueError as exc:
            reason = f"[tls] intercept: {exc}"
        fit = f"{reason}: run `sudo atlantic ca init`" if reason else "fits [tls] intercept"
    typer.echo("\n".join([
        f"Local CA:    {directory}",
        f"subject:     {cert.subject.rfc4514_string()}",
        f"fingerprint: SHA256 {fingerprint(cert)}",
        f"permits:     {', '.join(constrained_domains(cert)) or 'nothing'} (and names under them; no IP address)",
        f"expires:     {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({'expired' if left < 0 else f'in {left} days'})",
        f"config:      {fit}",
        f"trust store: {trust_state(data, trust_dir())}",
    ]))
