"""Overlap between two datasets: identities of A that are identities of B, and images present in both.

Face-recognition teams remove the people of their test sets from their training sets and
look for the same crawl under two dataset names. Both questions reduce to what the merge
rule asks inside one dataset (:mod:`cleanface.purify.identities`), asked across two:

* identities: each identity of A is compared with its nearest identity of B by the
  similarity of their images (``q``, :func:`cleanface.purify.identities.pooled_similarity`);
  the probability that the two are one person comes from the same mirrored mixture as
  the merge rule, with the same-person reference measured on the random halves of the
  identities of both datasets;
* images: every image of A whose cosine to an image of B reaches ``dup_cos`` (the
  near-duplicate test of purify, across the two sets).

Both sets must be embedded by the same model. Arrays in, arrays out; the files are
written by :mod:`cleanface.purify.overlap_runner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanface.purify import _faiss
from cleanface.purify.analysis import finite_rows, unit_rows
from cleanface.purify.identities import calibrate_merges, group_sums, half_similarities, nearest_identities
from cleanface.purify.neighbours import DUP_NEIGHBOURS, DUP_NPROBE, SAMPLE_STORAGE

OVERLAP_MIN_IMAGES = 2  # images each side needs: test identities are often small, and the embedder is usually a pretrained one


@dataclass
class Overlap:
    """What :func:`find_overlap` found.

    Attributes
    ----------
    nearest : ndarray (C_A,), int64
        Each identity of A's nearest identity of B (-1 when none is defined).
    similarity, score : ndarray (C_A,), float64
        Their similarity ``q`` and the calibrated probability that they are one person (NaN when undefined).
    shared : ndarray (C_A,), bool
        ``score >= cut``: the identity of A is an identity of B.
    image_pairs : ndarray (P, 2), int64
        ``(image of A, image of B)`` with cosine at least ``dup_cos``, sorted.
    image_cos : ndarray (P,), float32
    calibration : dict
        The mixture's fit (:class:`cleanface.purify.calibration.Calibration` as a dict, with
        ``shared_rate``), or ``{"used": False, "reason"}``.
    """

    nearest: np.ndarray
    similarity: np.ndarray
    score: np.ndarray
    shared: np.ndarray
    image_pairs: np.ndarray
    image_cos: np.ndarray
    calibration: dict = field(default_factory=dict)


def identity_overlap(emb_a: np.ndarray, labels_a: np.ndarray, num_a: int, emb_b: np.ndarray, labels_b: np.ndarray, num_b: int, *,
                     cut: float = 0.5, exact_below: int = 50_000, seed: int = 0, silent: bool = True,
                     min_images: int = OVERLAP_MIN_IMAGES):
    """``(nearest, similarity, score, calibration dict)`` of each identity of A against the identities of B (see :class:`Overlap`)."""
    fin_a, fin_b = finite_rows(emb_a), finite_rows(emb_b)
    sums_a = group_sums(emb_a, labels_a, num_a, fin_a)
    sums_b = group_sums(emb_b, labels_b, num_b, fin_b)
    nearest, q = nearest_identities(sums_a, sums_b, exact_below=exact_below, seed=seed, silent=silent, min_images=min_images)
    halves = np.concatenate([half_similarities(emb_a, labels_a, num_a, fin_a, seed=seed, min_images=min_images),
                             half_similarities(emb_b, labels_b, num_b, fin_b, seed=seed, min_images=min_images)])
    cal, score = calibrate_merges(q, halves, cut=cut)
    if cal is None:
        info = {"used": False, "reason": "too few identities with two halves of two images, or with a nearest identity, to calibrate"}
        return nearest, q, np.full(num_a, np.nan), info
    return nearest, q, score.astype(np.float64), {"used": True, **cal.to_dict(), "shared_rate": round(cal.noise_rate, 4)}


def shared_images(emb_a: np.ndarray, emb_b: np.ndarray, dup_cos: float, *, exact_below: int = 50_000, seed: int = 0,
                  silent: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (image of A, image of B) with cosine >= ``dup_cos`` among each A image's ``DUP_NEIGHBOURS`` nearest in B.

    Scored again in float32 from the embeddings, sorted by (A, B); non-finite images never pair.
    """
    empty = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    if not len(emb_a) or not len(emb_b):
        return empty
    fin_a, fin_b = finite_rows(emb_a), finite_rows(emb_b)
    rows_b = np.flatnonzero(fin_b)
    rows_a = np.flatnonzero(fin_a)
    if not len(rows_a) or not len(rows_b):
        return empty
    built = _faiss.build_index(emb_b[rows_b] if len(rows_b) < len(emb_b) else emb_b, exact_below=exact_below, nprobe=DUP_NPROBE,
                               seed=seed, silent=silent, what="images of B", storage=SAMPLE_STORAGE)
    floor = dup_cos - _faiss.FP16_COS_ERROR if built.stores_float16 else dup_cos
    queries = emb_a[rows_a] if len(rows_a) < len(emb_a) else emb_a
    scores, ids = _faiss.search(built, queries, min(DUP_NEIGHBOURS, len(rows_b)), min_score=floor, silent=silent, what="shared images")
    del built
    a = np.repeat(rows_a, ids.shape[1])
    keep = (ids.ravel() >= 0) & (scores.ravel() >= floor)
    a, b = a[keep], rows_b[ids.ravel()[keep]]
    cos = np.einsum("nd,nd->n", unit_rows(np.asarray(emb_a[a], np.float32), dtype=np.float32),
                    unit_rows(np.asarray(emb_b[b], np.float32), dtype=np.float32)) if len(a) else np.zeros(0, np.float32)
    ok = cos >= dup_cos
    pairs = np.stack([a[ok], b[ok]], axis=1).astype(np.int64) if ok.any() else np.zeros((0, 2), np.int64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], cos[ok][order].astype(np.float32)


def find_overlap(emb_a: np.ndarray, labels_a: np.ndarray, num_a: int, emb_b: np.ndarray, labels_b: np.ndarray, num_b: int, *,
                 cut: float = 0.5, dup_cos: float = 0.98, exact_below: int = 50_000, seed: int = 0, silent: bool = True) -> Overlap:
    """Identities of A that are identities of B, and images in both (see the module docstring)."""
    if emb_a.shape[1] != emb_b.shape[1]:
        raise ValueError(f"the two datasets' embeddings differ in size ({emb_a.shape[1]} and {emb_b.shape[1]}): embed both with one model")
    nearest, q, score, cal = identity_overlap(emb_a, labels_a, num_a, emb_b, labels_b, num_b, cut=cut, exact_below=exact_below,
                                              seed=seed, silent=silent)
    pairs, cos = shared_images(emb_a, emb_b, dup_cos, exact_below=exact_below, seed=seed, silent=silent)
    return Overlap(nearest=nearest, similarity=q, score=score, shared=np.nan_to_num(score, nan=0.0) >= cut,
                   image_pairs=pairs, image_cos=cos, calibration=cal)
