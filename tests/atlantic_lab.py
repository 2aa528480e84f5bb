"""Helpers for end-to-end tests that run `atlantic` in the lab's client namespace.

Not a test module: the lab tests import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

ATLANTIC = [sys.executable, "-m", "atlantic"]


def ns_run(ns: str, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` inside network namespace ``ns``, bounded in time, output captured."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=timeout, **kw)


def atlantic(lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `atlantic` command in the client namespace (text output)."""
    return ns_run(lab.client_ns, [*ATLANTIC, *args], timeout=timeout, text=True)


def status(lab) -> dict:
    """`atlantic status --json` in the client namespace."""
    return json.loads(atlantic(lab, "status", "--json").stdout)


@contextlib.contextmanager
def atlantic_up(lab, upstream: str | None = None, *, config: str | None = None):
    """Atlantic up in the client namespace for the block (an upstream URL or a config
    file); yields its status and is always brought down after."""
    atlantic(lab, "down")
    args = ["--upstream", upstream] if upstream else ["--config", config]
    try:
        res = atlantic(lab, "up", *args)
        assert res.returncode == 0, res.stderr
        yield status(lab)
    finally:
        res = atlantic(lab, "down")
        assert res.returncode == 0, res.stderr


def curl(lab, url: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Plain curl (no proxy option) from the client namespace, body in stdout (bytes)."""
    return ns_run(lab.client_ns, ["curl", "-sS", "--max-time", str(timeout), "--noproxy", "*",
                                  "--cacert", lab.ca_file, *extra, url], timeout=timeout + 10)
