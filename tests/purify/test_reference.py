"""An earlier purify output as the reference of the next round: weights by location, clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError
from cleanface.purify.reference import reference_weights
from cleanface.purify.signals import loo_mean_angle


def _index(root: Path) -> DatasetIndex:
    paths = [f"{n}/{j}.png" for n in ("ann", "bob") for j in range(3)]
    return DatasetIndex.from_lists(root, "folder", paths, [p.split("/")[0] for p in paths])


def _reference(out: Path, index: DatasetIndex, actions: list[str], complete: bool = True) -> Path:
    out.mkdir(parents=True)
    with open(out / "decisions.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["index", "location", "action"])
        for i, a in enumerate(actions):
            w.writerow([i, index.location(i), a])
        w.writerow(["", str(out / "broken.jpg"), "drop"])  # a file indexing set aside: not a sample
    if complete:
        (out / "COMPLETE").write_text("{}")
    return out


def test_members_count_and_the_others_do_not(tmp_path):
    index = _index(tmp_path / "data")
    actions = ["keep", "drop", "relabel", "merge", "dedup", "new-identity"]
    ref = _reference(tmp_path / "round-1", index, actions)
    assert reference_weights(ref, index).tolist() == [1, 0, 0, 1, 1, 0]
    shuffled = index.subset(np.array([5, 4, 3, 2, 1, 0]), renumber=False)  # matched by location, not by row number
    assert reference_weights(ref, shuffled).tolist() == [0, 1, 1, 0, 0, 1]


def test_an_incomplete_or_foreign_reference_is_one_clear_error(tmp_path):
    index = _index(tmp_path / "data")
    partial = _reference(tmp_path / "partial", index, ["keep"] * 6, complete=False)
    with pytest.raises(DataError, match="not a complete purify output"):
        reference_weights(partial, index)
    other = DatasetIndex.from_lists(tmp_path / "elsewhere", "folder", ["ann/0.png"], ["ann"])
    ref = _reference(tmp_path / "round-1", index, ["keep"] * 6)
    with pytest.raises(DataError, match=r"elsewhere/ann/0.png is not in the reference"):
        reference_weights(ref, other)


def test_a_weight_of_zero_leaves_the_mean_but_is_still_scored():
    e = np.array([[1, 0, 0], [1, 0.2, 0], [1, -0.2, 0], [0, 1, 0]], dtype=np.float32)  # the last one is someone else
    labels = np.zeros(4, dtype=np.int64)
    plain, _ = loo_mean_angle(e, labels, 1)
    weighted, sums = loo_mean_angle(e, labels, 1, np.array([1, 1, 1, 0], dtype=np.float32))
    assert np.allclose(sums[0], (e[:3] / np.linalg.norm(e[:3], axis=1, keepdims=True)).sum(0), atol=1e-6)
    assert weighted[3] == pytest.approx(90.0, abs=1e-4)  # scored against the three others' mean, which has no y part
    assert weighted[0] == pytest.approx(0.0, abs=1e-3) and plain[0] > 5  # the outsider no longer pulls the mean
