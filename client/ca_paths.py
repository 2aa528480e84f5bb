"""Where the local CA lives: what the daemon and the commands share without typer
(``client/ca.py`` is the ``atlantic ca`` command, and imports it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CA_DIR_ENV", "CERT_FILE", "DEFAULT_CA_DIR", "KEY_FILE", "ca_dir"]

CA_DIR_ENV = "ATLANTIC_CA_DIR"
# The same as forwarder/localca.py's, which only the commands that need it import
# (cryptography costs ~130 ms).
DEFAULT_CA_DIR = Path("/var/lib/atlantic/ca")
KEY_FILE, CERT_FILE = "ca.key", "ca.pem"


def ca_dir(cfg=None) -> Path:
    """Where the CA lives: $ATLANTIC_CA_DIR, else ``[tls] ca_dir``, else /var/lib/atlantic/ca."""
    if os.environ.get(CA_DIR_ENV):
        return Path(os.environ[CA_DIR_ENV])
    configured = getattr(getattr(cfg, "tls", None), "ca_dir", None)
    return Path(configured) if configured else DEFAULT_CA_DIR
