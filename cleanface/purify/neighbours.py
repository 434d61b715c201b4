"""The FAISS searches behind the rules: close dominant sub-centers, the nearest other identity, near-duplicates.

Each function takes a :class:`cleanface.purify._faiss.BuiltIndex` and returns plain
arrays; the rules in :mod:`cleanface.purify.rules` decide what to do with them.
"""

from __future__ import annotations

import numpy as np

from cleanface.purify import _faiss
from cleanface.purify.analysis import cos_to_degrees, l2_normalize

RELABEL_CANDIDATES = 4  # dominant sub-centers searched per dropped image (own identity skipped)
MERGE_NEIGHBOURS = 10  # neighbours searched per dominant sub-center for merges
DUP_NEIGHBOURS = 5  # neighbours searched per sample for near-duplicates
DUP_NPROBE = 4  # IVF cells searched for near-duplicates: pairs at cosine >= 0.98 almost always share a cell
SAMPLE_STORAGE = "float16"  # how the IVF index of all samples keeps them: 1 KB per 512-d image instead of 2 KB; pairs are re-scored in float32


def close_pairs(vectors: np.ndarray, built: "_faiss.BuiltIndex", max_angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows of ``vectors`` (M, D) less than ``max_angle`` degrees apart, among each row's ``MERGE_NEIGHBOURS`` nearest.

    ``built`` indexes ``vectors`` (then searched as :func:`~cleanface.purify._faiss.self_search`)
    or holds other vectors. Returns ``(a, b, angle)``: row, neighbour (ids into the index,
    never the row itself) and their angle in degrees, each (P,); both directions of a pair
    may appear.
    """
    m = len(vectors)
    scores, ids = _faiss.self_search(built, MERGE_NEIGHBOURS + 1) if built.index.ntotal == m else \
        _faiss.search(built, vectors, MERGE_NEIGHBOURS + 1)
    rows = np.repeat(np.arange(m), ids.shape[1])
    cols, sc = ids.ravel(), scores.ravel()
    angles = cos_to_degrees(sc)
    keep = (cols >= 0) & (cols != rows) & (angles < max_angle)
    return rows[keep], cols[keep], angles[keep]


def best_other_identity(
    queries: np.ndarray, own: np.ndarray, identities: np.ndarray, built: "_faiss.BuiltIndex", *, silent: bool = True,
    group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the nearest dominant sub-center of another identity: (label int64 (Q,), angle float32 (Q,)).

    The index holds the dominant sub-centers of ``identities``; the top
    ``RELABEL_CANDIDATES + 1`` are searched and the candidates in the query's own group
    skipped, the nearest one left taken; -1 / NaN when none is left. ``group`` (C,)
    gives each label's group (the label it merges into); by default each identity is its
    own group, so only the own identity is skipped.
    """
    q = len(queries)
    label = np.full(q, -1, dtype=np.int64)
    angle = np.full(q, np.nan, dtype=np.float32)
    if q == 0 or len(identities) == 0:
        return label, angle
    scores, ids = _faiss.search(built, queries, RELABEL_CANDIDATES + 1, silent=silent, what="relabel search")
    return other_identity(scores, ids, own, identities, group)


def other_identity(scores: np.ndarray, ids: np.ndarray, own: np.ndarray, identities: np.ndarray,
                   group: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_other_identity` from the search's ``scores`` and ``ids`` (Q, k), best first."""
    q = len(own)
    label = np.full(q, -1, dtype=np.int64)
    angle = np.full(q, np.nan, dtype=np.float32)
    if q == 0:
        return label, angle
    cand = np.where(ids >= 0, identities[np.maximum(ids, 0)], -1)
    if group is None:
        usable = (cand >= 0) & (cand != own[:, None])
    else:
        usable = (cand >= 0) & (group[np.maximum(cand, 0)] != group[own][:, None])
    has = usable.any(axis=1)
    pick = np.argmax(usable, axis=1)  # scores are sorted best first
    rows = np.flatnonzero(has)
    label[rows] = cand[rows, pick[rows]]
    angle[rows] = cos_to_degrees(scores[rows, pick[rows]])
    return label, angle


def near_duplicates(embeddings: np.ndarray, finite: np.ndarray, dup_cos: float, built: "_faiss.BuiltIndex", *, silent: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sample pairs (i < j) with cosine >= ``dup_cos`` among each sample's ``DUP_NEIGHBOURS`` nearest: (pairs (P, 2), cos (P,)).

    ``built`` indexes ``embeddings`` themselves, in order; the queries are read back from
    it (:func:`cleanface.purify._faiss.self_search`). With a flat index the neighbours
    are exact; with an IVF index they are those in the ``nprobe`` cells nearest to each
    sample, scored exactly cell by cell, so a pair is found when either sample's probed
    cells hold the other. Sorted by (i, j); non-finite samples never pair.
    """
    n = len(embeddings)
    if built.index.ntotal != n:
        raise ValueError(f"the index must hold the {n} embeddings, it holds {built.index.ntotal} vectors")
    floor = dup_cos - _faiss.FP16_COS_ERROR if built.stores_float16 else dup_cos
    scores, ids = _faiss.self_search(built, DUP_NEIGHBOURS + 1, min_score=floor, silent=silent, what="duplicate search")
    return pairs_from_neighbours(embeddings, finite, scores, ids, floor, dup_cos, rescore=built.stores_float16)


def pairs_from_neighbours(embeddings: np.ndarray, finite: np.ndarray, scores: np.ndarray, ids: np.ndarray, floor: float, dup_cos: float, *,
                          rescore: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i < j) of each sample and its neighbours ``ids`` (N, k) scoring at least ``floor``; ``rescore``: scored again in float32, kept at ``dup_cos``."""
    rows = np.repeat(np.arange(len(embeddings)), ids.shape[1])
    return pairs_from_candidates(embeddings, finite, rows, ids.ravel(), scores.ravel(), floor, dup_cos, rescore=rescore)


def pairs_from_candidates(embeddings: np.ndarray, finite: np.ndarray, rows: np.ndarray, cols: np.ndarray, sc: np.ndarray, floor: float,
                          dup_cos: float, *, rescore: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pairs_from_neighbours` of candidate pairs ``(rows[i], cols[i])`` scoring ``sc[i]`` (-1 cols are no candidate)."""
    n = len(embeddings)
    keep = (cols >= 0) & (cols != rows) & (sc >= floor)
    rows, cols, sc = rows[keep], cols[keep], sc[keep]
    keep = finite[rows] & finite[cols]
    a = np.minimum(rows[keep], cols[keep])
    b = np.maximum(rows[keep], cols[keep])
    sc = sc[keep]
    key = a * n + b
    key, first = np.unique(key, return_index=True)
    pairs = np.stack([key // n, key % n], axis=1).astype(np.int64) if len(key) else np.zeros((0, 2), np.int64)
    sc = sc[first].astype(np.float32)
    if rescore:  # float16 scores only nominate: the pairs are scored again from the embeddings, in float32
        sc = exact_cosines(embeddings, pairs)
        pairs, sc = pairs[sc >= dup_cos], sc[sc >= dup_cos]
    return pairs, sc


def exact_cosines(embeddings: np.ndarray, pairs: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
    """Cosine of each pair of rows of ``embeddings`` (any float dtype, a memmap is fine), in float32: (P,)."""
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), chunk):
        a = l2_normalize(embeddings[pairs[s : s + chunk, 0]])
        b = l2_normalize(embeddings[pairs[s : s + chunk, 1]])
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out
