"""Overlap between two datasets on hand-made embeddings: shared people and shared images are found, others are not."""

from __future__ import annotations

import numpy as np
import pytest

from cleanface.purify.overlap import find_overlap, shared_images
from tests.purify.test_identities import DIM, people, photos


def two_sets(seed: int = 0):
    """A: 30 people x 8 photos; B: 30 people x 8 photos of which people 0-4 are A's people 0-4 (new photos), and
    B's image 0 is A's image 3 itself."""
    rng = np.random.default_rng(seed)
    centres = people(60, seed)
    a = np.vstack([photos(centres[c], 8, rng) for c in range(30)])
    b_people = list(range(5)) + list(range(30, 55))
    b = np.vstack([photos(centres[c], 8, rng) for c in b_people])
    b[0] = a[3]
    labels = np.repeat(np.arange(30), 8)
    return a.astype(np.float32), labels, b.astype(np.float32), labels.copy()


def test_find_overlap_names_the_shared_people_and_the_copied_image():
    a, la, b, lb = two_sets()
    found = find_overlap(a, la, 30, b, lb, 30)
    assert np.flatnonzero(found.shared).tolist() == [0, 1, 2, 3, 4]
    assert found.nearest[:5].tolist() == [0, 1, 2, 3, 4] and (found.score[:5] > 0.9).all()
    assert np.nanmax(found.score[5:]) < 0.5
    assert found.calibration["used"] and found.calibration["shared_rate"] == pytest.approx(5 / 30, abs=0.08)
    assert found.image_pairs.tolist() == [[3, 0]] and found.image_cos[0] == pytest.approx(1.0, abs=1e-5)


def test_no_overlap_between_different_people():
    a, la, b, lb = two_sets()
    rng = np.random.default_rng(9)
    others = np.vstack([photos(c, 8, rng) for c in people(30, seed=77)]).astype(np.float32)
    found = find_overlap(a, la, 30, others, lb, 30)
    assert not found.shared.any() and len(found.image_pairs) == 0


def test_shared_images_skip_non_finite_rows_and_need_one_embedding_size():
    a, la, b, lb = two_sets()
    a[3] = np.nan
    pairs, cos = shared_images(a, b, 0.98)
    assert len(pairs) == 0 and len(cos) == 0
    with pytest.raises(ValueError, match="differ in size"):
        find_overlap(a, la, 30, b[:, : DIM // 2], lb, 30)
