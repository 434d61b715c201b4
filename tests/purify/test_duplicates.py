"""The near-duplicate finder and the cell-by-cell IVF search behind it, against brute force."""

import numpy as np
import pytest

from cleanface.purify import _faiss
from cleanface.purify.analysis import l2_normalize
from cleanface.purify.decisions import DUP_NPROBE, near_duplicates

DUP_COS = 0.98


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_force_pairs(x: np.ndarray, finite: np.ndarray, dup_cos: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j of finite rows with cosine >= dup_cos, sorted, from the full Gram matrix in float64."""
    y = l2_normalize(np.where(finite[:, None], x, 0.0)).astype(np.float64)
    gram = y @ y.T
    i, j = np.nonzero(np.triu(gram >= dup_cos, k=1) & finite[:, None] & finite[None, :])
    return np.stack([i, j], axis=1), gram[i, j]


def planted_data(seed: int = 0, n: int = 4000, d: int = 64):
    """Random unit vectors, an IVF index over them, and planted near-duplicate pairs added to both.

    Half of the planted pairs straddle two cells: they sit on either side of the bisector
    of two neighbouring centroids, each nearer to a different one, with cosine about 0.99
    between them; the other half are a random vector and a slightly moved copy. Returns
    the vectors (float32), the index over all of them and the number of random ones.
    """
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n, d)))
    built = _faiss.build_index(base, exact_below=1000, nprobe=DUP_NPROBE, seed=0)
    cent = built.index.quantizer.reconstruct_n(0, built.index.nlist).astype(np.float64)
    cc = cent @ cent.T
    np.fill_diagonal(cc, -np.inf)
    border, used = [], set()
    for a in rng.permutation(len(cent)):
        b = int(np.argmax(cc[a]))
        if len(border) == 40 or a in used or b in used:
            continue
        used |= {int(a), b}
        mid = unit(cent[a] + cent[b])
        side = unit(cent[a] - cent[b] - (cent[a] - cent[b]) @ mid * mid)
        wobble = rng.standard_normal(d)
        wobble -= (wobble @ mid) * mid + (wobble @ side) * side
        centre = unit(mid + 0.1 * unit(wobble))
        border += [unit(centre + 0.07 * side), unit(centre - 0.07 * side)]
    near = []
    for i in rng.choice(n, 20, replace=False):
        near.append(unit(base[i] + rng.uniform(0.05, 0.15) * unit(rng.standard_normal(d))))
    planted = np.array(border + near)
    built.index.add(_faiss._clean(planted))  # ids n, n + 1, ... as in the concatenation below
    return np.concatenate([base, planted]).astype(np.float32), built, n


def test_near_duplicates_match_brute_force_across_cell_borders():
    x, ivf, n = planted_data()
    finite = np.ones(len(x), dtype=bool)
    gone = n + 1  # a border vector, made non-finite: its pair disappears
    finite[gone] = False
    x[gone, 0] = np.nan
    truth, truth_cos = brute_force_pairs(x, finite, DUP_COS)
    assert len(truth) == 39 and gone not in truth
    assert np.abs(truth_cos - DUP_COS).min() > 1e-3  # no pair close enough to the threshold for rounding to matter

    assert ivf.describe() == f"IVF64,Flat nprobe={DUP_NPROBE}"
    _, cell = ivf.index.quantizer.search(l2_normalize(np.nan_to_num(x)), 1)
    straddling = (cell[truth[:, 0], 0] != cell[truth[:, 1], 0]).sum()
    assert straddling >= 15  # the border pairs really lie in two cells

    for built in (ivf, _faiss.build_index(x, exact_below=50_000)):
        pairs, cos = near_duplicates(x, finite, DUP_COS, built)
        np.testing.assert_array_equal(pairs, truth)
        np.testing.assert_allclose(cos, truth_cos, atol=1e-5)


def test_one_probe_misses_the_pairs_across_borders():
    x, built, _ = planted_data()
    finite = np.ones(len(x), dtype=bool)
    truth, _ = brute_force_pairs(x, finite, DUP_COS)
    built.index.nprobe = 1
    pairs, _ = near_duplicates(x, finite, DUP_COS, built)
    found = {tuple(p) for p in pairs.tolist()}
    assert found < {tuple(p) for p in truth.tolist()}  # a strict subset: nprobe is what reaches across borders


@pytest.mark.parametrize("min_score", [None, 0.3])
def test_cell_by_cell_search_equals_faiss_ivf_search(min_score):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 48)).astype(np.float16)  # any float dtype, normalised inside
    x[7] = np.inf
    built = _faiss.build_index(x, exact_below=1000, nprobe=6, seed=3)
    queries = rng.standard_normal((700, 48)).astype(np.float32)
    queries[3] = np.nan
    scores, ids = _faiss.search(built, queries, 8, min_score=min_score)
    ref_scores, ref_ids = built.index.search(_faiss._clean(queries), 8)
    if min_score is not None:
        low = ref_scores < min_score
        ref_scores[low], ref_ids[low] = -np.inf, -1
        assert (ids == -1).any() and (ids >= 0).any()
    found = ids >= 0
    np.testing.assert_array_equal(found, ref_ids >= 0)
    np.testing.assert_allclose(scores[found], ref_scores[found], atol=1e-5)
    assert (np.diff(np.where(found, scores, -2), axis=1) <= 0).all()  # best first
    # the same ids wherever the order is not decided by a near tie
    with np.errstate(invalid="ignore"):  # -inf - -inf past the last result
        gap = np.minimum(np.abs(np.diff(ref_scores, axis=1, prepend=np.inf)), np.abs(np.diff(ref_scores, axis=1, append=-np.inf)))
    clear = found & (gap > 1e-5)
    np.testing.assert_array_equal(ids[clear], ref_ids[clear])
    again = _faiss.search(built, queries, 8, min_score=min_score)
    np.testing.assert_array_equal(again[1], ids)  # deterministic


def test_self_search_uses_the_cells_found_while_indexing():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    built = _faiss.build_index(x, exact_below=1000, nprobe=3)
    assert built.probes.shape == (3000, 3)
    _, home = built.index.quantizer.search(l2_normalize(x), 3)
    assert (built.probes[:, 0] == home[:, 0]).mean() > 0.99  # the nearest centroid holds the vector
    for c in range(built.index.nlist):
        ids = _faiss._cell(built.index, c)[1]
        np.testing.assert_array_equal(built.probes[ids, 0], c)
    own = _faiss.self_search(built, 5)
    queried = _faiss.search(built, x, 5)
    np.testing.assert_array_equal(own[1], queried[1])
    np.testing.assert_allclose(own[0], queried[0], atol=1e-6)
    assert (own[1][:, 0] == np.arange(3000)).all()
    flat = _faiss.build_index(x)
    np.testing.assert_array_equal(_faiss.self_search(flat, 5)[1], _faiss.search(flat, x, 5)[1])


def test_top_columns():
    s = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]], dtype=np.float32)
    assert _faiss.top_columns(s, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert _faiss.top_columns(s, 9).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]
    assert sorted(_faiss.top_columns(s, 2, ordered=False)[1].tolist()) == [0, 1]


def _pair_at(rng: np.random.Generator, cos: float, d: int) -> list[np.ndarray]:
    """Two unit vectors whose cosine is ``cos``."""
    u = unit(rng.standard_normal(d))
    w = rng.standard_normal(d)
    w = unit(w - (w @ u) * u)
    return [u, cos * u + np.sqrt(1 - cos * cos) * w]


def test_float16_lists_give_the_float32_pairs_and_cosines():
    x, _, n = planted_data()
    rng = np.random.default_rng(5)
    edge = _pair_at(rng, DUP_COS + 3e-4, 64) + _pair_at(rng, DUP_COS - 3e-4, 64)  # within float16 rounding of the threshold
    x = np.concatenate([x, np.array(edge, dtype=np.float32)])
    finite = np.ones(len(x), dtype=bool)
    truth, truth_cos = brute_force_pairs(x, finite, DUP_COS)
    last = len(x) - 4
    assert [last, last + 1] in truth.tolist() and [last + 2, last + 3] not in truth.tolist()

    built = _faiss.build_index(x, exact_below=1000, nprobe=DUP_NPROBE, seed=0, storage="float16")
    assert built.describe() == f"IVF64,SQfp16 nprobe={DUP_NPROBE}"
    assert faiss_ivf(built).code_size == 64 * 2  # two bytes per component in the inverted lists
    pairs, cos = near_duplicates(x, finite, DUP_COS, built)
    np.testing.assert_array_equal(pairs, truth)
    np.testing.assert_allclose(cos, truth_cos, atol=1e-6)  # re-scored in float32, not the float16 scores


def faiss_ivf(built):
    import faiss

    return faiss.extract_index_ivf(built.index)


def test_self_search_over_float16_lists_in_several_passes(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    full = _faiss.build_index(x, exact_below=1000, nprobe=3)
    half = _faiss.build_index(x, exact_below=1000, nprobe=3, storage="float16")
    np.testing.assert_array_equal(full.probes, half.probes)  # the same cells
    s32, i32 = _faiss.self_search(full, 5)
    s16, i16 = _faiss.self_search(half, 5)
    assert np.abs(s16 - s32).max() <= _faiss.FP16_COS_ERROR
    assert (i16 == i32).mean() > 0.98 and (i16[:, 0] == np.arange(3000)).all()
    monkeypatch.setattr(_faiss, "SELF_QUERY_CHUNK_FP16", 700)  # five passes instead of one
    again = _faiss.self_search(half, 5)
    np.testing.assert_array_equal(again[1], i16)
    np.testing.assert_allclose(again[0], s16, atol=1e-6)  # the same products, blocked differently by BLAS
    with pytest.raises(ValueError, match="storage"):
        _faiss.build_index(x, storage="int8")


@pytest.mark.parametrize("dims", [0, 4])
def test_bounded_cell_search_equals_the_float16_index_search(dims, monkeypatch):
    """The cells scored through the projection bound find the pairs and cosines of the full products of a float16 IVF index."""
    from cleanface.purify import sharded_search

    rng = np.random.default_rng(4)
    base = unit(rng.standard_normal((3000, 48)) + 2.0 * unit(rng.standard_normal(48)))  # a cone, as face embeddings are
    near = [unit(base[i] + rng.uniform(0.02, 0.21) * unit(rng.standard_normal(48))) for i in rng.choice(3000, 80, replace=False)]
    x = np.concatenate([base, near, base[:5]]).astype(np.float16)  # slightly moved copies, some near the threshold, and exact copies
    x[11] = np.nan
    finite = np.isfinite(x.astype(np.float32)).all(axis=1)
    factory, params = _faiss.choose_factory(len(x), exact_below=1000, nprobe=DUP_NPROBE, storage="float16")
    built = _faiss.build_index(x, exact_below=1000, nprobe=DUP_NPROBE, seed=0, storage="float16")
    want_pairs, want_cos = near_duplicates(x, finite, DUP_COS, built)
    if dims:  # a poor basis (4 of 48 directions): the bound is loose, the answer the same
        monkeypatch.setattr(sharded_search, "BOUND_DIMENSIONS", dims)
    got_pairs, got_cos = sharded_search.sharded_near_duplicates(x, finite, DUP_COS, factory, params, 0)
    assert len(want_pairs) >= 40
    np.testing.assert_array_equal(got_pairs, want_pairs)
    np.testing.assert_array_equal(got_cos, want_cos)


def test_the_projection_bound_holds():
    from cleanface.purify.sharded_search import bound_rows, projection_basis

    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((500, 32)) + unit(rng.standard_normal(32))).astype(np.float32)
    basis = projection_basis(x, seed=0, dims=6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-5)
    bound = bound_rows(x, basis) @ bound_rows(x, basis).T
    assert (bound >= x @ x.T - 1e-5).all()
    assert np.allclose(np.diag(bound), 1.0, atol=1e-5)  # tight for a row with itself
