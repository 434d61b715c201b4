"""Reading a run directory back without its models: names, accuracy history, the weights' stamp."""

from __future__ import annotations

import json

import pytest

from cleanface.errors import CheckpointError
from cleanface.inference.run import accuracy_per_epoch, model_stamp, read_run_names


def test_accuracy_per_epoch_averages_the_logged_steps_of_each_epoch(tmp_path):
    rows = [{"step": s, "epoch": s / 3, "acc": a} for s, a in zip(range(1, 7), [0.0, 0.3, 0.6, 0.5, 0.5, 0.2])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert accuracy_per_epoch(tmp_path) == pytest.approx([0.3, 0.4])  # epoch 1.0 closes the first epoch
    assert accuracy_per_epoch(tmp_path / "missing") is None
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    assert accuracy_per_epoch(tmp_path) is None


def test_names_and_stamp(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_run_names(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is .* a training run directory"):
        read_run_names(tmp_path)
    (tmp_path / "identities.txt").write_text("ann\nbob\n")
    assert read_run_names(tmp_path) == ["ann", "bob"]
    assert model_stamp(tmp_path) == ""
    (tmp_path / "model.pt").write_bytes(b"one")
    first = model_stamp(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"two")
    assert len(first) == 16 and model_stamp(tmp_path) != first
