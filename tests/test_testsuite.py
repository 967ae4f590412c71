"""The test suite's own machinery (tests/conftest.py): every test is marked `unit` or
`system` without anyone marking it, and under CI a skip fails, also with parallel
workers (pytest -n). Each case runs pytest on a small suite of its own, with the
project's conftest.py and server harness copied beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from server_harness import ROOT

SAMPLE = """
import subprocess

import pytest


def run_true():
    return subprocess.run(["true"]).returncode


@pytest.fixture
def started():
    return run_true()


def test_arithmetic():
    assert 1 + 1 == 2


def test_uses_the_pizauth_fixture(pizauth):
    pass


def test_uses_the_provider_fixture(provider):
    pass


def test_calls_a_helper_that_runs_a_command():
    assert run_true() == 0


def test_uses_a_fixture_that_runs_a_command(started):
    assert started == 0


@pytest.mark.unit
def test_marked_unit_by_hand():
    assert run_true() == 0


@pytest.mark.system
def test_marked_system_by_hand():
    pass
"""

SKIPS = """
import pytest


def test_passes():
    pass


def test_skips():
    pytest.skip("a tool is missing")
"""


def suite(tmp_path: Path, source: str) -> Path:
    for name in ("conftest.py", "server_harness.py"):
        shutil.copy(ROOT / "tests" / name, tmp_path / name)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_sample.py").write_text(source)
    return tmp_path


def run_pytest(where: Path, *args: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = str(ROOT / "examples")  # the harness's provider
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def collected(where: Path, marker: str) -> set[str]:
    result = run_pytest(where, "--collect-only", "-q", "-m", marker)
    assert result.returncode == 0, result.stdout + result.stderr
    return {line.split("::")[1] for line in result.stdout.splitlines() if "::" in line}


def test_tests_are_marked_system_or_unit_by_what_they_start(tmp_path: Path) -> None:
    where = suite(tmp_path, SAMPLE)
    system = {
        "test_uses_the_pizauth_fixture",
        "test_uses_the_provider_fixture",
        "test_calls_a_helper_that_runs_a_command",
        "test_uses_a_fixture_that_runs_a_command",
        "test_marked_system_by_hand",
    }
    unit = {"test_arithmetic", "test_marked_unit_by_hand"}
    assert collected(where, "system") == system
    assert collected(where, "unit") == unit
    assert collected(where, "not system") == unit


def test_a_skip_fails_under_ci_also_with_parallel_workers(tmp_path: Path) -> None:
    where = suite(tmp_path, SKIPS)
    for args in ((), ("-n", "2")):
        outside = run_pytest(where, *args)
        assert outside.returncode == 0, outside.stdout
        assert "1 passed, 1 skipped" in outside.stdout
        under_ci = run_pytest(where, *args, ci=True)
        assert under_ci.returncode == 1, under_ci.stdout
        assert "1 failed, 1 passed" in under_ci.stdout
        assert "skipped under CI (CI=true), which must run it" in under_ci.stdout
        assert "a tool is missing" in under_ci.stdout
