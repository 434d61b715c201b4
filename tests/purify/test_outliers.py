"""Outlier groups above the HDBSCAN cap: the vectorised approximate prediction against hdbscan's own."""

import warnings

import hdbscan
import numpy as np
import pytest

from cleanface.purify.outliers import approximate_labels, nearest_neighbours, outlier_groups


def blobs(seed: int, n: int = 5000, d: int = 6) -> np.ndarray:
    """Blobs of several sizes and spreads, some inside wider ones (nested clusters), plus uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((25, d)) * 4
    centres[20:] = centres[:5] + rng.standard_normal((5, d)) * 0.8  # tight blobs next to wide ones
    spread = np.r_[rng.uniform(0.3, 1.0, 20), np.full(5, 0.1)]
    which = rng.integers(0, 25, n)
    x = centres[which] + rng.standard_normal((n, d)) * spread[which, None]
    return np.concatenate([x, rng.uniform(-10, 10, (n // 5, d))])


def test_nearest_neighbours_are_exact():
    rng = np.random.default_rng(0)
    points, queries = rng.standard_normal((700, 5)), rng.standard_normal((1100, 5))
    queries[:3] = points[:3]  # distance 0
    dist, idx = nearest_neighbours(queries, points, 7)
    full = np.sqrt(((queries[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    ref = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(full, ref, axis=1), rtol=1e-12, atol=1e-12)
    assert (idx[:3, 0] == np.arange(3)).all() and (dist[:3, 0] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_approximate_labels_equal_hdbscan_approximate_predict(seed):
    x = blobs(seed)
    fit, rest = x[::3], np.delete(x, np.s_[::3], axis=0)
    clusterer = hdbscan.HDBSCAN(min_cluster_size=8, prediction_data=True).fit(fit)
    assert clusterer.labels_.max() >= 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _ = hdbscan.approximate_predict(clusterer, rest)
    ours = approximate_labels(clusterer, fit, rest, 8)
    np.testing.assert_array_equal(ours, ref)
    assert 0.2 < (ours >= 0).mean() < 0.95


def test_outlier_groups_above_the_cap_predict_the_rest():
    x = blobs(3, n=3000, d=24)
    groups, info = outlier_groups(x, min_cluster_size=8, cap=1500, dims=6)
    assert info["fitted"] == 1500 and info["predicted"] == len(x) - 1500
    assert groups.max() >= 5 and (groups >= 0).mean() > 0.2
    again, _ = outlier_groups(x, min_cluster_size=8, cap=1500, dims=6)
    np.testing.assert_array_equal(groups, again)


def test_outlier_groups_fall_back_to_hdbscan_when_its_internals_differ(monkeypatch):
    x = blobs(4, n=1500, d=12)
    ours, _ = outlier_groups(x, min_cluster_size=8, cap=700, dims=6)

    def missing(*args, **kwargs):
        raise AttributeError("'CondensedTree' object has no attribute '_raw_tree'")

    monkeypatch.setattr("cleanface.purify.outliers.approximate_labels", missing)
    theirs, info = outlier_groups(x, min_cluster_size=8, cap=700, dims=6)
    assert info["predicted"] == len(x) - 700
    np.testing.assert_array_equal(ours, theirs)
