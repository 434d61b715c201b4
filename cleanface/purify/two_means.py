"""Spherical 2-means inside every identity, in one pass over the embeddings.

The split rule (:func:`cleanface.purify.rules.apply_calibrated_split`) cuts each
identity's member images into two groups and compares them. Every identity is
independent of the others but for one global decision, when to stop: the rounds stop
after the first one in which at most ``tolerance`` of all members change group. So one
block of whole identities is read once and run for every round, recording each round's
groups (one byte per image and round) and each round's comparison of the two groups; once
all blocks are back, the stopping round is chosen from the summed changes and its groups
and similarities are kept. That is the result of one pass per round, computed with the
same operations on the same rows in the same order (sums are formed per identity within
the same blocks of ``chunk`` rows and added in block order), so the numbers match it bit
for bit, in one read of the embeddings instead of up to ``iterations + 6`` (the mean, two seeds,
the rounds, the two groups' sums and the members' sums, each a pass).

Seeds, per identity: the member farthest from the identity's mean (group 1's seed) and
the member farthest from that one (group 0's), ties to the lower row; then each round
assigns every member to the nearer group centre and moves each centre to its members'
normalised sum (an emptied group keeps its centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

from cleanface.purify import shards
from cleanface.purify.analysis import finite_values, unit_rows
from cleanface.purify.identities import SPLIT_MIN_IMAGES, pooled_similarity
from cleanface.purify.signals import CHUNK

ITERATIONS = 8  # at most: the rounds stop once at most TOLERANCE of the members change group
TOLERANCE = 0.001


@dataclass(frozen=True)
class TwoMeans:
    """The 2-means of every identity.

    Attributes
    ----------
    group : ndarray (N,) int64
        Each member's group, 0 or 1; -1 for non-members.
    sizes : ndarray (C, 2) int64
        Members in each group.
    similarity : ndarray (C,) float64
        :func:`cleanface.purify.identities.pooled_similarity` of the two groups (NaN where it is undefined).
    member_sums : ndarray (C, D) float32
        Sum of each identity's unit member embeddings.
    rounds : int
        Rounds run before the stop.
    """

    group: np.ndarray
    sizes: np.ndarray
    similarity: np.ndarray
    member_sums: np.ndarray
    rounds: int


def two_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, members: np.ndarray, *,
              iterations: int = ITERATIONS, tolerance: float = TOLERANCE, chunk: int = CHUNK) -> TwoMeans:
    """Spherical 2-means inside every identity at once (module docstring); ``members`` (N,) bool must leave out non-finite rows.

    Blocks of whole identities run on the runner in effect (:mod:`cleanface.purify.shards`);
    besides the result it holds ``iterations`` bytes per image.
    """
    labels = np.asarray(labels, dtype=np.int64)
    members = np.asarray(members, dtype=bool)
    n, d = len(labels), embeddings.shape[1]
    rounds = max(1, int(iterations))
    group = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros((num_classes, 2), dtype=np.int64)
    similarity = np.full(num_classes, np.nan)
    member_sums = np.zeros((num_classes, d), dtype=np.float32)
    if not members.any():
        return TwoMeans(group, sizes, similarity, member_sums, 0)
    grouped = bool(np.all(labels[1:] >= labels[:-1]))
    order = np.arange(n) if grouped else np.argsort(labels, kind="stable")
    bounds = np.array([hi for _, hi in shards.blocks(n, chunk)], dtype=np.int64)  # the row blocks whose sums are added in order
    arrays = {"embeddings": embeddings, "order": order, "labels": labels, "members": members, "bounds": bounds}
    spans = identity_spans(labels[order], chunk)
    parts = []
    changed = np.zeros(rounds, dtype=np.int64)
    for (lo, hi), part in zip(spans, shards.current().imap(_block, spans, arrays, rounds=rounds, contiguous=grouped)):
        parts.append((lo, hi, part))
        changed += part["changed"]
    limit = int(members.sum()) * tolerance
    stop = next((r for r in range(rounds) if changed[r] <= limit), rounds - 1)
    for lo, hi, part in parts:
        ids = part["ids"]
        group[order[lo:hi]] = part["groups"][stop]
        sizes[ids] = part["sizes"][stop]
        similarity[ids] = part["similarity"][stop]
        member_sums[ids] = part["sums"]
    return TwoMeans(group, sizes, similarity, member_sums, stop + 1)


def two_groups(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, members: np.ndarray, *,
               iterations: int = ITERATIONS, chunk: int = CHUNK) -> np.ndarray:
    """Each member's group (0 or 1) from :func:`two_means`, -1 for non-members."""
    return two_means(embeddings, labels, num_classes, members, iterations=iterations, chunk=chunk).group


def filled_similarity(two: TwoMeans, min_share: float = 0.3) -> np.ndarray:
    """``two.similarity`` where both groups are well filled (each at least ``SPLIT_MIN_IMAGES`` and ``min_share`` of the members), else NaN."""
    small, total = two.sizes.min(axis=1), two.sizes.sum(axis=1)
    return np.where((small >= SPLIT_MIN_IMAGES) & (small >= min_share * total), two.similarity, np.nan)


def identity_spans(sorted_labels: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive spans of ``sorted_labels`` of about ``size`` rows (fewer under a runner's ``max_block``), each ending where an identity does."""
    n = len(sorted_labels)
    if n == 0:
        return []
    size = max(1, min(int(size), getattr(shards.current(), "max_block", None) or int(size)))
    ends = np.r_[np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1, n]  # where each identity's rows end
    spans, lo = [], 0
    while lo < n:
        hi = int(ends[np.searchsorted(ends, min(n, lo + size))]) if lo + size < n else n
        hi = max(hi, int(ends[np.searchsorted(ends, lo, side="right")]))  # at least one identity
        spans.append((lo, hi))
        lo = hi
    return spans


def _block(lo: int, hi: int, a: dict, *, rounds: int, contiguous: bool) -> dict:
    """Every round of the 2-means of the identities whose rows are ``order[lo:hi]``."""
    rows = np.arange(lo, hi) if contiguous else np.asarray(a["order"][lo:hi])
    raw = a["embeddings"][lo:hi] if contiguous else a["embeddings"][rows]
    x = finite_values(unit_rows(np.asarray(raw, dtype=np.float32), dtype=np.float32))
    lab = np.asarray(a["labels"][rows])
    inside = np.asarray(a["members"][rows])
    ids, local = np.unique(lab, return_inverse=True)
    part = np.searchsorted(np.asarray(a["bounds"]), rows, side="right")  # which row block of the one-pass-a-round version
    sums = _ordered_sums(local, part, x, inside, len(ids))
    c1 = x[_farthest(x, local, inside, unit_rows(sums, dtype=np.float32), len(ids))]
    c0 = x[_farthest(x, local, inside, c1, len(ids))]
    previous = np.full(len(rows), -1, dtype=np.int8)
    out = {"ids": ids, "sums": sums, "changed": np.zeros(rounds, np.int64), "groups": np.empty((rounds, len(rows)), np.int8),
           "sizes": np.empty((rounds, len(ids), 2), np.int64), "similarity": np.empty((rounds, len(ids)))}
    for r in range(rounds):
        nearer_1 = np.einsum("nd,nd->n", x, c1[local]) > np.einsum("nd,nd->n", x, c0[local])
        new = np.where(inside, nearer_1, -1).astype(np.int8)
        out["changed"][r] = int((new != previous).sum())
        if r and not out["changed"][r]:  # nobody moved: every later round is this one again
            for key in ("groups", "sizes", "similarity"):
                out[key][r:] = out[key][r - 1]
            break
        out["groups"][r] = previous = new
        both = _ordered_sums(2 * local + nearer_1, part, x, inside, 2 * len(ids)).reshape(len(ids), 2, -1)
        counts = np.bincount(2 * local[inside] + nearer_1[inside], minlength=2 * len(ids)).reshape(len(ids), 2)
        out["sizes"][r] = counts
        out["similarity"][r] = pooled_similarity(both[:, 0], counts[:, 0], both[:, 1], counts[:, 1])
        for g, centre in ((0, c0), (1, c1)):
            norm = np.linalg.norm(both[:, g], axis=1)
            filled = norm > 1e-6
            centre[filled] = both[filled, g] / norm[filled, None]
    return out


def _ordered_sums(local: np.ndarray, part: np.ndarray, x: np.ndarray, use: np.ndarray, m: int) -> np.ndarray:
    """(m, D) float32: per group ``local``, the sum of its ``use`` rows of ``x``, formed per row block ``part`` and added in block order."""
    out = np.zeros((m, x.shape[1]), dtype=np.float32)
    rows = np.flatnonzero(use)
    if not len(rows):
        return out
    blocks = int(part.max()) + 1
    present, key_of = np.unique(local[rows] * blocks + part[rows], return_inverse=True)  # (group, block), ascending with the rows
    weight = csr_matrix((np.ones(len(rows), np.float32), (key_of.ravel(), rows)), shape=(len(present), len(x)))
    partial = weight @ x  # each (group, block) summed over its rows in row order, as block_sums does
    owner = present // blocks
    rank = np.arange(len(present)) - np.searchsorted(owner, owner)  # 0 for a group's first block, 1 for its second...
    for r in range(int(rank.max()) + 1):
        at = rank == r
        out[owner[at]] += partial[at]
    return out


def _farthest(x: np.ndarray, local: np.ndarray, inside: np.ndarray, reference: np.ndarray, m: int) -> np.ndarray:
    """Per identity, the position of its member least similar to ``reference[identity]`` (ties: the first); 0 when it has none."""
    value = np.where(inside, np.einsum("nd,nd->n", x, reference[local]), np.inf)
    order = np.lexsort((np.arange(len(value)), value, local))
    first = order[np.r_[True, local[order][1:] != local[order][:-1]]]
    pick = np.zeros(m, dtype=np.int64)
    pick[local[first]] = first
    return pick
