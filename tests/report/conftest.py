"""Fixtures of the report tests: a purify output directory and a run directory made by hand."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from . import browser
from .fixtures import make_purify_dir, make_run_dir


@pytest.fixture()
def purify_dir(tmp_path: Path) -> Path:
    return make_purify_dir(tmp_path)


@pytest.fixture()
def calibrated_purify_dir(tmp_path: Path) -> Path:
    """A purify output of the calibrated drop rule: ``noise_score`` and ``loo_angle`` columns, ``calibration`` in the summary."""
    return make_purify_dir(tmp_path, calibration="used")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "run")


@pytest.fixture(scope="session")
def chromium() -> str:
    found = browser.find_chromium()
    if found is None and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False, timeout=600, capture_output=True,
                           env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = browser.find_chromium()
    if found is None:
        pytest.skip("Chromium is not installed and 'apt-get install -y chromium' did not install it")
    return found
