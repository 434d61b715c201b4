"""Fixtures of the report tests: a purify output directory and a run directory made by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

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
