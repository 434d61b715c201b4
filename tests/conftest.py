"""Shared fixtures: where the real face data lives, and a quiet torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLEANFACE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set CLEANFACE_SHARED_DATA to its parent folder)")
    return path


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """The LFW folder holding images_deepfunneled/ and the pairs/people lists."""
    return _require(SHARED_DATA / "lfw", "LFW")


@pytest.fixture(scope="session")
def orl_root() -> Path:
    """The ORL database: s1..s40/1..10.pgm."""
    return _require(SHARED_DATA / "orl", "ORL")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
