"""Shared fixtures: the network-namespace lab, brought up once per session.

Lab tests are marked ``@pytest.mark.lab`` and take the ``lab`` fixture (a `LabEnv`);
tests that build their own namespaces or daemons are marked ``@pytest.mark.lab_local``.
Either kind skips with a reason when it cannot run here (not root, a program missing),
or fails with that reason under ``ATLANTIC_LAB=require`` (CI), and the run ends with
one line counting the lab tests that passed, failed and skipped. The lab is torn
down at the end of the session, also after a failure or Ctrl-C, unless another live
test session is using it too (then the last one out takes it down).
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest
from atlantic_lab import LAB_ENV, atlantic, lab_required, lab_unavailable, status

from atlantic.lab import LabEnv, LabError, acquire, missing_tools, ns_exec_argv, release

LAB_DELAY_MS = 20.0
# The health monitor probes and checks the exit against the lab's origin, never a public name.
LAB_HEALTH = '[health]\nprobe_url = "http://origin.test/small"\nexpected_status = 200\necho_url = "http://origin.test/ip"\n'
LAB_MARKERS = ("lab", "lab_local")
_lab_started = False


def pytest_configure(config):
    """Register the lab markers (``lab`` is also declared in pyproject.toml); check ATLANTIC_LAB."""
    config.addinivalue_line("markers", "lab: end-to-end test in the network-namespace lab")
    config.addinivalue_line("markers", "lab_last: runs after every other test (it cycles the lab)")
    config.addinivalue_line("markers", "lab_local: end-to-end test with its own namespaces or "
                                       "daemons (needs root); counted with the lab tests")
    if os.environ.get(LAB_ENV, "") not in ("", "require"):
        raise pytest.UsageError(f"{LAB_ENV}={os.environ[LAB_ENV]!r}: the only value is 'require' "
                                "(lab tests that cannot run fail instead of skipping)")
    config.pluginmanager.register(LabTally(), "atlantic-lab-tally")


def is_lab_test(item: pytest.Item) -> bool:
    """Marked ``lab`` or ``lab_local``, or using the ``lab`` fixture."""
    return (any(item.get_closest_marker(m) for m in LAB_MARKERS)
            or "lab" in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config, items):
    """Move ``lab_last`` tests to the end of the run, keeping their relative order; as
    non-root, give ``lab_local`` tests a skipif saying they need root."""
    last = [i for i in items if i.get_closest_marker("lab_last")]
    if last:
        items[:] = [i for i in items if not i.get_closest_marker("lab_last")] + last
    if os.geteuid() != 0:
        needs_root = pytest.mark.skipif(True, reason="needs root (its own network namespaces, "
                                                     "nftables, TUN or daemons)")
        for item in items:
            if item.get_closest_marker("lab_local"):
                item.add_marker(needs_root)


@pytest.hookimpl(tryfirst=True)  # before the skipping plugin evaluates skipif
def pytest_runtest_setup(item):
    """Under ATLANTIC_LAB=require a lab test with a skipif whose (boolean) condition holds
    fails with the skipif's reason: the machine lacks something the lab needs."""
    if not (lab_required() and is_lab_test(item)):
        return
    for mark in item.iter_markers("skipif"):
        condition = mark.args[0] if mark.args else mark.kwargs.get("condition")
        if isinstance(condition, bool) and condition:
            lab_unavailable(mark.kwargs.get("reason", "a skipif condition holds"))


class LabTally:
    """Each lab test's outcome (a failure in any phase wins), and the closing line."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if is_lab_test(item):
            seen = self.outcomes.get(item.nodeid)
            if report.failed:
                self.outcomes[item.nodeid] = "failed"
            elif seen == "failed":
                pass
            elif report.skipped:
                self.outcomes[item.nodeid] = "skipped"
            elif report.when == "call":
                self.outcomes[item.nodeid] = "passed"
        return report

    def pytest_terminal_summary(self, terminalreporter):
        if not self.outcomes:
            return
        counts = Counter(self.outcomes.values())
        note = f" ({LAB_ENV}=require)" if lab_required() else ""
        terminalreporter.write_line(f"lab tests: {counts['passed']} passed, {counts['failed']} failed, "
                                    f"{counts['skipped']} skipped{note}")


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
        lab_unavailable(reason)
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


@pytest.fixture
def up(lab, tmp_path):
    """Start Atlantic in the client namespace with a given upstream (and CA); always down after."""
    started = []

    def start(url: str, *, sections: str = "", **upstream_keys) -> dict:
        """``sections``: more TOML tables appended to the config (e.g. ``[capture]``)."""
        cfg = tmp_path / "atlantic.toml"
        cfg.touch(mode=0o600)  # the URL holds the proxy password
        keys = "".join(f'{k} = "{v}"\n' for k, v in upstream_keys.items())
        cfg.write_text(f'[upstream]\nurl = "{url}"\n{keys}{LAB_HEALTH}{sections}')
        atlantic(lab, "down")
        res = atlantic(lab, "up", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        started.append(True)
        return status(lab)

    yield start
    if started:
        res = atlantic(lab, "down")
        assert res.returncode == 0, res.stderr
