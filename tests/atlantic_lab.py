"""Helpers for end-to-end tests: run `atlantic` in the lab's client namespace, and say
what happens to a lab test that cannot run on this machine.

Not a test module: the lab tests import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest

ATLANTIC = [sys.executable, "-m", "atlantic"]
LAB_ENV = "ATLANTIC_LAB"  # "require": a lab test that cannot run fails instead of skipping


def lab_required() -> bool:
    """True under ``ATLANTIC_LAB=require`` (CI): every lab test must run."""
    return os.environ.get(LAB_ENV, "") == "require"


def lab_unavailable(reason: str) -> NoReturn:
    """A lab test cannot run here (not root, a program missing, ...): skip with *reason*,
    or fail with it under ``ATLANTIC_LAB=require``."""
    if lab_required():
        pytest.fail(f"{reason} ({LAB_ENV}=require: lab tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


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


def squid_lines(lab, start: int, needle: str, want: int, timeout: float = 10) -> list[str]:
    """Lines of Squid's access log past line ``start`` that contain ``needle``. Squid logs a
    transaction when it ends (a tunnel when it closes): polled, bounded, until ``want`` match."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for ln in Path(lab.squid_access_log).read_text().splitlines()[start:] if needle in ln]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)
