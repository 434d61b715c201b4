"""A small synthetic face set and fast training settings shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanface.data.synthetic import make_synthetic

SIZE = 32


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    """8 synthetic identities x 10 images at 32x32."""
    return make_synthetic(tmp_path_factory.mktemp("train") / "faces", identities=8, per_identity=10, size=SIZE, seed=0, silent=True)


@pytest.fixture
def fast(tmp_path) -> dict:
    """Settings of a training run of a few seconds on CPU."""
    return {"input_size": SIZE, "embedding_size": 32, "batch_size": 16, "epochs": 3, "lr": 0.05, "silent": True, "device": "cpu",
            "cache_dir": str(tmp_path / "cache"), "log_every": 1}
