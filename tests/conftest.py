"""Shared fixtures: the network-namespace lab, brought up once per session.

Lab tests are marked ``@pytest.mark.lab`` and take the ``lab`` fixture (a `LabEnv`).
They skip with a reason when not root or a needed program is missing. The lab is torn
down at the end of the session, also after a failure or Ctrl-C, unless another live
test session is using it too (then the last one out takes it down).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from atlantic.lab import LabEnv, LabError, acquire, missing_tools, ns_exec_argv, release

LAB_DELAY_MS = 20.0
_lab_started = False


def pytest_configure(config):
    """Register the lab markers (``lab`` is also declared in pyproject.toml)."""
    config.addinivalue_line("markers", "lab: end-to-end test in the network-namespace lab")
    config.addinivalue_line("markers", "lab_last: runs after every other test (it cycles the lab)")


def pytest_collection_modifyitems(config, items):
    """Move ``lab_last`` tests to the end of the run, keeping their relative order."""
    last = [i for i in items if i.get_closest_marker("lab_last")]
    if last:
        items[:] = [i for i in items if not i.get_closest_marker("lab_last")] + last


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    if missing := missing_tools():
        return f"lab tests need these programs: {', '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def lab() -> LabEnv:
    """The running lab (delay 20 ms one way), up once per session, always torn down."""
    global _lab_started
    if reason := lab_skip_reason():
        pytest.skip(reason)
    _lab_started = True
    try:
        env = acquire(delay_ms=LAB_DELAY_MS)
    except LabError as e:  # up() already removed what it had created
        _lab_started = False
        pytest.fail(str(e), pytrace=False)
    try:
        yield env
    finally:
        _lab_started = False
        release()


def pytest_sessionfinish(session, exitstatus):
    """Ctrl-C can skip fixture teardown; make sure the lab goes away anyway."""
    global _lab_started
    if _lab_started:
        _lab_started = False
        try:
            release()
        except LabError as e:
            print(f"\nlab teardown: {e}")


def ns_run(ns: str, argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run *argv* in lab namespace *ns* (``client``, ``proxy``...), bounded by *timeout*.

    Output is captured as bytes; the exit code is not checked.
    """
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(ns_exec_argv(ns, argv), capture_output=True, timeout=timeout,
                          env=full_env, input=input)


@pytest.fixture
def in_ns(lab):
    """``in_ns(ns, argv, timeout=60)``: run a command in a lab namespace with the LAB_* env."""
    lab_env = lab.as_env()

    def run(ns: str, argv: list[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
        return ns_run(ns, argv, timeout=timeout, env={**lab_env, **kw.pop("env", {})}, **kw)

    return run
