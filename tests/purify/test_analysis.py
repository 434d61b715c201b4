import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from cleanface.purify.analysis import (
    angle_to_dominant,
    dominant_subcenters,
    finite_rows,
    group_percentile,
    identity_stats,
    nearest_subcenter,
    non_dominant,
    subcenter_votes,
    unit_rows,
)
from tests.purify.conftest import basis_centers, toward


def test_nearest_and_cosines_against_a_direct_computation():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4, 3, 8)).astype(np.float32) * 5  # not normalised on purpose
    labels = rng.integers(0, 4, 50)
    emb = rng.standard_normal((50, 8)).astype(np.float32) * 3
    nearest, cos = nearest_subcenter(emb, labels, centers, chunk=7)
    cn = centers / np.linalg.norm(centers, axis=2, keepdims=True)
    en = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = np.einsum("nd,nkd->nk", en, cn[labels])
    np.testing.assert_allclose(cos, want, atol=1e-5)
    assert nearest.tolist() == np.argmax(want, axis=1).tolist()


def test_non_finite_and_zero_rows():
    centers = basis_centers(1)
    emb = np.stack([toward(0, 1, 10), np.full(24, np.nan), np.zeros(24), toward(1, 0, 5)]).astype(np.float32)
    emb[3, 5] = np.inf
    nearest, cos = nearest_subcenter(emb, np.zeros(4, int), centers)
    assert finite_rows(emb).tolist() == [True, False, True, False]
    assert nearest.tolist() == [0, -1, 0, -1]
    assert np.isnan(cos[1]).all() and np.isnan(cos[3]).all()
    assert np.all(cos[2] == 0)  # a zero vector is guarded, not NaN


def test_dominant_votes_ties_and_empty_identities():
    # identity 0 votes [2, 2, 1] -> tie goes to 0; identity 1 votes [0, 3, 3] -> 1; identity 2 empty -> -1
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    nearest = np.array([1, 0, 2, 0, 1, 1, 2, 2, 1, 1, 2, -1])
    votes = subcenter_votes(nearest, labels, 3, 3)
    assert votes.tolist() == [[2, 2, 1], [0, 3, 3], [0, 0, 0]]
    assert dominant_subcenters(nearest, labels, 3, 3).tolist() == [0, 1, -1]
    assert non_dominant(nearest, labels, np.array([0, 1, -1])).tolist() == [True, False, True, False, True, False, True, True, False, False, True, False]


def test_angle_to_dominant_in_degrees():
    centers = basis_centers(2)
    emb = np.stack([toward(0, 1, 30), toward(1, 0, 20), toward(3, 5, 40), toward(4, 3, 10)]).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    nearest, cos = nearest_subcenter(emb, labels, centers)
    dom = dominant_subcenters(nearest, labels, 2, 3)
    assert dom.tolist() == [0, 0]  # identity 0: one vote each for 0 and 1 -> 0; identity 1: votes 0 and 1 -> 0
    np.testing.assert_allclose(angle_to_dominant(cos, labels, dom), [30, 70, 40, 80], atol=1e-3)
    assert np.isnan(angle_to_dominant(cos, labels, np.array([-1, 0]))[:2]).all()


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(0, 180)), min_size=1, max_size=60), st.sampled_from([0, 10, 50, 90, 100]))
def test_group_percentile_matches_numpy(rows, q):
    groups = np.array([g for g, _ in rows])
    values = np.array([v for _, v in rows])
    got = group_percentile(values, groups, 6, q)
    for g in range(6):
        sel = values[groups == g]
        if len(sel):
            assert got[g] == pytest.approx(np.percentile(sel, q), abs=1e-3)
        else:
            assert np.isnan(got[g])


def test_identity_stats():
    angles = np.array([10, 20, 30, np.nan, 80, 40], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1])
    nearest = np.array([0, 0, 1, -1, 2, 2])
    dropped = np.array([False, False, False, True, True, False])
    s = identity_stats(angles, labels, nearest, dropped, 3, 3)
    assert s.count.tolist() == [3, 2, 0]
    assert s.votes.tolist() == [[2, 1, 0], [0, 0, 2], [0, 0, 0]]
    np.testing.assert_allclose(s.angle_mean[:2], [20, 60])
    np.testing.assert_allclose(s.angle_std[:2], [np.std([10, 20, 30]), 20], rtol=1e-5)
    np.testing.assert_allclose(s.angle_spread[:2], [16, 32], rtol=1e-5)
    np.testing.assert_allclose(s.drop_share[:2], [0.25, 0.5])
    assert np.isnan(s.angle_mean[2]) and np.isnan(s.drop_share[2])


def test_unit_rows_keeps_float16_and_does_not_copy_unit_rows():
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((50, 3, 16)) * 4
    raw[2, 1] = 0.0
    for dtype in (np.float16, np.float32):
        x = raw.astype(dtype)
        y = unit_rows(x, chunk=7)
        assert y.dtype == dtype and y.shape == x.shape and y is not x
        norms = np.linalg.norm(y.astype(np.float64), axis=-1)
        assert np.all(y[2, 1] == 0) and np.allclose(np.delete(norms.ravel(), 2 * 3 + 1), 1.0, atol=2e-3)
        assert unit_rows(y, chunk=7) is y  # already unit length: used as it is
    mixed = unit_rows(raw.astype(np.float32))
    mixed[-1] *= 2  # unit rows first, one long row in the last chunk
    fixed = unit_rows(mixed, chunk=7)
    assert fixed is not mixed and np.allclose(np.linalg.norm(fixed[-1], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(fixed[:-1], mixed[:-1])
    assert unit_rows(raw).dtype == np.float32  # float64 in, float32 out


def test_unit_rows_is_the_one_normaliser_behind_l2_normalize_and_the_faiss_inputs():
    from cleanface.purify import _faiss
    from cleanface.purify.analysis import l2_normalize

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((40, 8)) * 3).astype(np.float16)
    x[5], x[6, 2], x[7] = np.nan, np.inf, 0.0
    with np.errstate(invalid="ignore"):
        direct = x.astype(np.float32) / np.maximum(np.sqrt(np.einsum("ij,ij->i", x.astype(np.float32), x.astype(np.float32))), 1e-12)[:, None]
        plain = unit_rows(x, dtype=np.float32, tol=0.0, chunk=9)
    assert plain.dtype == np.float32 and np.isnan(plain[5]).all() and np.isnan(plain[6]).any()
    np.testing.assert_array_equal(plain, direct)  # bitwise the division, chunk by chunk
    clean = unit_rows(x, dtype=np.float32, tol=0.0, zero_non_finite=True, chunk=9)
    assert (clean[5:8] == 0).all() and np.array_equal(np.delete(clean, [5, 6], 0), np.delete(direct, [5, 6], 0))
    np.testing.assert_array_equal(_faiss._clean(x), clean)
    assert _faiss._clean(x[:, ::2]).flags.c_contiguous
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(l2_normalize(x), plain)
    exact = np.eye(8, dtype=np.float32)
    assert unit_rows(exact, tol=0.0) is exact and _faiss._clean(exact) is exact  # already unit: no copy
    nudged = exact * np.float32(1 + 2 ** -20)
    assert unit_rows(nudged, tol=0.0) is not nudged and unit_rows(nudged) is nudged  # within the float32 rounding by default
    bad = exact.copy()
    bad[3] = np.nan
    assert (unit_rows(bad, zero_non_finite=True)[3] == 0).all()  # a zeroed row is never returned as it was


def test_float16_centers_give_the_float32_cosines():
    rng = np.random.default_rng(6)
    centers = rng.standard_normal((20, 3, 32)).astype(np.float32)
    labels = rng.integers(0, 20, 300)
    emb = rng.standard_normal((300, 32)).astype(np.float16)
    n32, c32 = nearest_subcenter(emb, labels, centers)
    n16, c16 = nearest_subcenter(emb, labels, centers.astype(np.float16))
    assert c16.dtype == np.float32 and np.abs(c16 - c32).max() < 2e-3
    assert (n16 == n32).mean() > 0.97
