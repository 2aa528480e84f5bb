"""``nft`` as Atlantic runs it: one script per atomic transaction, one-line errors.

Shared by the kill switch (``killswitch.py``) and the TCP redirect (``redirect.py``): each
renders its own table (pure) and hands the script here. A missing ``nft`` or one that does
not answer is the caller's error class with one line saying so.
"""

from __future__ import annotations

import subprocess

NFT_TIMEOUT_S = 10.0


def run(args: list[str], script: str | None, error: type[Exception]) -> subprocess.CompletedProcess:
    """``nft ARGS`` with ``script`` on stdin; raises ``error`` (one line) when nft is missing or hangs."""
    try:
        return subprocess.run(
            ["nft", *args], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise error("nft is not installed: install the nftables package") from None
    except subprocess.TimeoutExpired:
        raise error(f"nft did not answer within {NFT_TIMEOUT_S:g} s") from None


def first_line(text: str) -> str:
    """The first non-blank line of nft's message."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "no message")


def apply_script(script: str, error: type[Exception], what: str) -> None:
    """Feed ``script`` to ``nft -f -`` (one transaction); ``error`` names ``what`` failed and why."""
    r = run(["-f", "-"], script, error)
    if r.returncode != 0:
        raise error(f"{what}: {first_line(r.stderr)}")


def has_table(family: str, name: str, error: type[Exception]) -> bool:
    """True while table ``family name`` exists."""
    return run(["list", "table", family, name], None, error).returncode == 0
