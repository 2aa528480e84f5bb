"""ATLANTIC_LAB=require: a lab test that cannot run fails with its reason instead of
skipping; without it, it skips as before; the run ends with a count of lab tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from atlantic_lab import LAB_ENV, lab_unavailable

HERE = Path(__file__).resolve().parent

SAMPLE = '''
import pytest
from atlantic_lab import lab_unavailable

@pytest.mark.lab
@pytest.mark.skipif(True, reason="no frobnicator here")
def test_lab_skipif():
    pass

@pytest.mark.lab
def test_lab_helper():
    lab_unavailable("no widget here")

@pytest.mark.lab
def test_lab_runs():
    pass

@pytest.mark.skipif(True, reason="not about the lab")
def test_unit_skipif():
    pass
'''


def test_helper_skips_with_the_reason_by_default(monkeypatch):
    """Without ATLANTIC_LAB the helper skips, carrying the reason."""
    monkeypatch.delenv(LAB_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs frobnicator"):
        lab_unavailable("needs frobnicator")


def test_helper_fails_with_the_reason_under_require(monkeypatch):
    """With ATLANTIC_LAB=require the helper fails (no traceback), carrying the reason and why."""
    monkeypatch.setenv(LAB_ENV, "require")
    with pytest.raises(pytest.fail.Exception, match="needs frobnicator .*ATLANTIC_LAB=require") as info:
        lab_unavailable("needs frobnicator")
    assert info.value.pytrace is False


def _run_sample(tmp_path: Path, env_value: str | None) -> subprocess.CompletedProcess:
    """The sample tests under this suite's conftest, in a fresh pytest process."""
    for name in ("conftest.py", "atlantic_lab.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != LAB_ENV}
    if env_value is not None:
        env[LAB_ENV] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_run_without_require_skips_lab_tests_and_counts_them(tmp_path):
    """Without the variable: lab skips stay skips, and the closing line counts lab tests only."""
    res = _run_sample(tmp_path, None)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lab tests: 1 passed, 0 failed, 2 skipped\n" in res.stdout
    assert "no frobnicator here" in res.stdout and "no widget here" in res.stdout


def test_run_with_require_fails_lab_tests_that_cannot_run(tmp_path):
    """With ATLANTIC_LAB=require: the skipif and the helper on lab tests fail with their
    reasons; a skipif on a unit test still skips."""
    res = _run_sample(tmp_path, "require")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "lab tests: 1 passed, 2 failed, 0 skipped (ATLANTIC_LAB=require)" in res.stdout
    assert "test_lab_skipif - Failed: no frobnicator here" in res.stdout
    assert "test_lab_helper - Failed: no widget here" in res.stdout
    assert "SKIPPED [1] test_sample.py" in res.stdout and ": not about the lab" in res.stdout


def test_an_unknown_value_is_a_usage_error(tmp_path):
    """A misspelt value does not silently mean 'skip': pytest refuses to start."""
    res = _run_sample(tmp_path, "requird")
    assert res.returncode == 4 and "ATLANTIC_LAB='requird'" in res.stderr
