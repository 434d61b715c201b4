"""Identity-level signals: one person under two names (merge) and two people under one name (split).

Both compare groups of images by their *mean pairwise cosine*, computed from sums of unit
embeddings without forming a pair: for groups A and B with sums ``S_A``, ``S_B`` and sizes
``n_A``, ``n_B``,

* between: ``b = S_A . S_B / (n_A n_B)``, the mean cosine of a pair across the groups;
* within (pooled): ``w = (|S_A|^2 - n_A + |S_B|^2 - n_B) / (n_A (n_A - 1) + n_B (n_B - 1))``,
  the mean cosine of a pair inside either group;
* the similarity ``q = b / w`` (:func:`pooled_similarity`): about 1 when A and B show the
  same person (a pair across is as alike as a pair inside), lower for two people; the
  ratio does not depend on how tight an embedder's clusters are (cleanface's own models,
  dlib's narrow cone).

Neither decision uses a fixed value of ``q``. Each is calibrated on the data, with the
impostor mixture of :mod:`cleanface.purify.calibration`, ``q`` placed linearly on its grid
(:func:`merge_position`; ``arccos`` would pile every ``q`` above 1, common for small
identities, at one end, and merged 24-59 pairs of different LFW people per set):

* merge: every identity's nearest other identity by ``q`` (:func:`nearest_identities`) is
  mostly another person, sometimes the same one under another name. The same-person
  distribution is measured on each identity's own two random halves
  (:func:`half_similarities`); the mixture's free component is the nearest other person.
  The score of a pair is the probability that it is one person.
* split: every identity's two groups found by spherical 2-means (:mod:`cleanface.purify.two_means`) are
  mostly one person cut in two; the two-people distribution is measured on pairs of
  identities drawn at random (:func:`random_pair_similarities`), as two namesakes are two
  random people. The score is the probability that the identity holds two people.

The references match the question when the embedder did not learn the labels being
checked (a pretrained model, ``purify --embeddings``). A model trained on the noisy labels
pushes two names of one person apart and pulls two people under one name together, so
its merges and splits are found less often (BENCHMARKS.md, "Identity-level noise").

Every function takes sums and counts or the (memmap-able) embeddings, never a pair matrix:
the costs are O(N D) per pass and O(C k D) for the neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanface.purify import _faiss, shards
from cleanface.purify.analysis import cos_to_degrees, finite_rows, unit_rows
from cleanface.purify.calibration import Calibration, calibrate
from cleanface.purify.signals import CHUNK, identity_sums_many

MERGE_MIN_IMAGES = 3  # images an identity (and each half of the reference) needs to be compared: fewer give too noisy a similarity
REFERENCE_TAIL = 0.01  # a proposal must lie inside the reference distribution it is said to belong to, but for this tail
MERGE_CANDIDATES = 10  # identities searched per identity (by mean direction) before rescoring by similarity
RANDOM_PAIRS = 20_000  # pairs of identities drawn for the two-people reference
SPLIT_MIN_IMAGES = 3  # each group of a split holds at least this many images


@dataclass(frozen=True)
class GroupSums:
    """Sums of unit embeddings per group (G, D) float32 and group sizes (G,) int64."""

    sums: np.ndarray
    counts: np.ndarray


def group_sums(embeddings: np.ndarray, groups: np.ndarray, num_groups: int, members: np.ndarray | None = None) -> GroupSums:
    """Sums and sizes of ``num_groups`` groups; ``groups`` (N,) in [0, G) or -1 (in no group); ``members`` (N,) bool, optional.

    ``members`` must leave out the rows that are not finite (the rules' members do); when it
    is None the finite rows are found here, in one more pass over the embeddings.
    """
    return group_sums_many(embeddings, [groups], num_groups, finite_rows(embeddings) if members is None else members)[0]


def group_sums_many(embeddings: np.ndarray, groupings: list[np.ndarray], num_groups: int, members: np.ndarray) -> list[GroupSums]:
    """:func:`group_sums` of several groupings (each (N,), -1 for none) of the ``members`` rows, in one pass over the embeddings."""
    members = np.asarray(members, dtype=bool)
    inside = [(np.asarray(g, dtype=np.int64) >= 0) & members for g in groupings]
    keys = [np.where(ins, g, 0) for g, ins in zip(groupings, inside)]
    sums = identity_sums_many(embeddings, keys, num_groups, [ins.astype(np.float32) for ins in inside])
    return [GroupSums(s, np.bincount(k[ins], minlength=num_groups).astype(np.int64)) for s, k, ins in zip(sums, keys, inside)]


def pooled_similarity(sa: np.ndarray, na: np.ndarray, sb: np.ndarray, nb: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """``q = between / pooled within`` mean pairwise cosine (module docstring), row by row: float64 (M,).

    ``sa``, ``sb`` (M, D) sums of unit embeddings, ``na``, ``nb`` (M,) sizes. NaN where a
    group is empty, where neither group holds a pair, or where the pooled within-group
    similarity is not positive (no coherent group to compare against). Dot products are
    taken ``chunk`` rows at a time, in float64, without a float64 copy of the sums.
    """
    na, nb = np.asarray(na, dtype=np.float64), np.asarray(nb, dtype=np.float64)
    m = len(na)
    sq_a, sq_b, dots = np.empty(m), np.empty(m), np.empty(m)
    for lo in range(0, m, chunk):
        x, y = np.asarray(sa[lo : lo + chunk]), np.asarray(sb[lo : lo + chunk])
        sq_a[lo : lo + chunk] = np.einsum("pd,pd->p", x, x, dtype=np.float64)
        sq_b[lo : lo + chunk] = np.einsum("pd,pd->p", y, y, dtype=np.float64)
        dots[lo : lo + chunk] = np.einsum("pd,pd->p", x, y, dtype=np.float64)
    pairs = na * (na - 1) + nb * (nb - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = (sq_a - na + sq_b - nb) / pairs
        q = dots / (na * nb) / within
    return np.where((na >= 1) & (nb >= 1) & (pairs > 0) & (within > 1e-6), q, np.nan)


def pair_similarities(first: GroupSums, a: np.ndarray, second: GroupSums, b: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """:func:`pooled_similarity` of the pairs ``(first[a[i]], second[b[i]])``: float64 (P,), gathered ``chunk`` pairs at a time."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.empty(len(a), dtype=np.float64)
    for lo in range(0, len(a), chunk):
        i, j = a[lo : lo + chunk], b[lo : lo + chunk]
        out[lo : lo + chunk] = pooled_similarity(first.sums[i], first.counts[i], second.sums[j], second.counts[j])
    return out


def similarity_angle(q: np.ndarray) -> np.ndarray:
    """Degrees ``arccos(q)``, with ``q`` clipped to [-1, 1] (a similarity above 1 is as alike as the halves of one person)."""
    return cos_to_degrees(np.asarray(q, dtype=np.float64))


def merge_position(q: np.ndarray) -> np.ndarray:
    """``q`` placed on the calibration's 0-180 grid, higher for more alike: ``150 + 60 (q - 1)``.

    Linear, so that similarities above 1 (small groups, noisy) keep their order instead of
    piling up at one end as ``arccos`` would put them; ``q`` in [-1.5, 1.5] fills the grid.
    """
    return 150.0 + 60.0 * (np.asarray(q, dtype=np.float64) - 1.0)


def merge_similarity(position: float | None) -> float | None:
    """The ``q`` at a grid position of :func:`merge_position` (None stays None)."""
    return None if position is None else round(1.0 + (float(position) - 150.0) / 60.0, 4)


# -- halves and random pairs: the reference distributions ---------------------------------------------
def random_halves(labels: np.ndarray, members: np.ndarray, seed: int) -> np.ndarray:
    """Each member image's half (0 or 1), alternating within its identity in a seeded random order; -1 for non-members."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(members)
    order = rows[np.random.default_rng(seed).permutation(len(rows))]
    order = order[np.argsort(labels[order], kind="stable")]
    lab = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(lab, lab)
    half = np.full(len(labels), -1, dtype=np.int64)
    half[order] = rank % 2
    return half


def half_similarities(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, members: np.ndarray, *, seed: int = 0,
                      min_images: int = MERGE_MIN_IMAGES) -> np.ndarray:
    """``q`` between two random halves of each identity's ``members`` (finite rows only): (C,), NaN unless both halves hold ``min_images`` or more.

    The same-person reference of the merge rule.
    """
    return halves_similarity(*member_and_half_sums(embeddings, labels, num_classes, members, seed=seed)[1:], min_images=min_images)


def member_and_half_sums(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, members: np.ndarray, *,
                         seed: int = 0) -> tuple[GroupSums, GroupSums, GroupSums]:
    """Each identity's ``members`` (finite rows only) and its two random halves (:func:`random_halves`), summed in one pass."""
    half = random_halves(labels, members, seed)
    labels = np.asarray(labels, dtype=np.int64)
    whole, a, b = group_sums_many(embeddings, [labels, np.where(half == 0, labels, -1), np.where(half == 1, labels, -1)], num_classes, members)
    return whole, a, b


def halves_similarity(a: GroupSums, b: GroupSums, *, min_images: int = MERGE_MIN_IMAGES) -> np.ndarray:
    """``q`` between the two halves ``a`` and ``b`` of each identity: (C,), NaN unless both hold ``min_images`` or more."""
    q = pooled_similarity(a.sums, a.counts, b.sums, b.counts)
    return np.where((a.counts >= min_images) & (b.counts >= min_images), q, np.nan)


def random_pair_similarities(sums: GroupSums, *, pairs: int = RANDOM_PAIRS, seed: int = 0) -> np.ndarray:
    """``q`` between identities drawn at random in pairs (never an identity with itself); the two-people reference."""
    usable = np.flatnonzero(sums.counts >= 1)
    if len(usable) < 2:
        return np.zeros(0, dtype=np.float64)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(usable), size=pairs)
    j = rng.integers(0, len(usable) - 1, size=pairs)
    j += j >= i  # uniform over the others
    q = pair_similarities(sums, usable[i], sums, usable[j])
    return q[np.isfinite(q)]


# -- merge: the nearest other identity -------------------------------------------------------------------
def nearest_identities(sums: GroupSums, other: GroupSums | None = None, *, exact_below: int = 50_000, seed: int = 0,
                       silent: bool = True, candidates: int = MERGE_CANDIDATES, min_images: int = MERGE_MIN_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """For each identity of ``sums``, the identity of highest ``q`` among its ``candidates`` nearest by mean direction.

    Searched among the other identities of ``sums`` itself, or among those of ``other``
    (another dataset, embedded by the same model). Returns ``(nearest int64 (C,), q
    float64 (C,))``; -1 / NaN for an identity with fewer than ``min_images`` members
    or without such a candidate.
    """
    c = len(sums.counts)
    nearest = np.full(c, -1, dtype=np.int64)
    best = np.full(c, np.nan)
    target = sums if other is None else other
    queries, has = _with_mean(sums, min_images), _with_mean(target, min_images)
    if not len(queries) or len(has) < (2 if other is None else 1):
        return nearest, best
    directions = unit_rows(target.sums[has], dtype=np.float32)
    built = _faiss.build_index(directions, exact_below=exact_below, seed=seed, silent=silent, what="identity means")
    k = min(candidates + (other is None), len(has))
    if other is None and getattr(shards.current(), "distributed", False):  # the same search, its queries on the workers
        from cleanface.purify.sharded_search import search_on_workers

        _, ids = search_on_workers(built, directions, np.arange(len(directions)), k)
    elif other is None:
        _, ids = _faiss.self_search(built, k, silent=silent, what="merge search")
    else:
        _, ids = _faiss.search(built, unit_rows(sums.sums[queries], dtype=np.float32), k, silent=silent, what="overlap search")
    del built
    rows = np.repeat(queries, ids.shape[1])
    cols = ids.ravel()
    ok = cols >= 0
    a, b = rows[ok], has[cols[ok]]
    if other is None:
        a, b = a[a != b], b[a != b]
    q = pair_similarities(sums, a, target, b)
    q = np.where(np.isfinite(q), q, -np.inf)
    order = np.lexsort((b, -q, a))  # per identity: highest q first, ties to the lower label
    a, b, q = a[order], b[order], q[order]
    first = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if len(a) else np.zeros(0, np.int64)
    found = first[np.isfinite(q[first])]
    nearest[a[found]] = b[found]
    best[a[found]] = q[found]
    return nearest, best


def _with_mean(sums: GroupSums, min_images: int) -> np.ndarray:
    """Identities with at least ``min_images`` members and a non-zero sum."""
    return np.flatnonzero((sums.counts >= min_images) & (np.linalg.norm(sums.sums, axis=1) > 1e-6))


def calibrate_merges(nearest_q: np.ndarray, halves_q: np.ndarray, *, cut: float = 0.5) -> tuple[Calibration | None, np.ndarray]:
    """The probability that each identity's nearest other identity is the same person: ``(calibration, score (C,))``.

    The impostor mixture of :func:`cleanface.purify.calibration.calibrate` on
    :func:`merge_position` of ``q``: its fixed component is the same-person distribution of
    ``halves_q``, its free Gaussian the nearest other person; ``noise_rate`` is then the
    share of identities whose nearest is themselves under another name. NaN scores where
    ``nearest_q`` is NaN; ``(None, NaN)`` with too few values to fit. The calibration's
    ``threshold`` is a grid position: :func:`merge_similarity` turns it into a ``q``.
    The mixture alone would call any pair far above the nearest other person the same one;
    so a pair less alike than the lowest ``REFERENCE_TAIL`` of the halves scores 0 (two
    different people 35 degrees apart are not one person because others are 70 apart).
    """
    halves_q = halves_q[np.isfinite(halves_q)]
    cal, score = calibrate(merge_position(nearest_q), merge_position(halves_q), cut=cut)
    if cal is not None:  # and only a pair as alike as the same person's halves mostly are
        with np.errstate(invalid="ignore"):
            score = np.where(nearest_q >= np.quantile(halves_q, REFERENCE_TAIL), score, np.where(np.isnan(score), np.nan, 0.0))
    return cal, score


# -- split: two groups inside one identity (found by :mod:`cleanface.purify.two_means`) ---------------------
def split_similarities(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, group: np.ndarray, *,
                       min_share: float = 0.3) -> tuple[np.ndarray, GroupSums, GroupSums]:
    """``q`` between each identity's two groups (C,) and the groups' sums.

    NaN unless both groups are well filled: each holds at least ``SPLIT_MIN_IMAGES`` images
    and ``min_share`` of the identity's members (a few outliers are not a second person).
    """
    labels = np.asarray(labels, dtype=np.int64)
    g0 = group_sums(embeddings, labels, num_classes, group == 0)
    g1 = group_sums(embeddings, labels, num_classes, group == 1)
    q = pooled_similarity(g0.sums, g0.counts, g1.sums, g1.counts)
    total = g0.counts + g1.counts
    small = np.minimum(g0.counts, g1.counts)
    filled = (small >= SPLIT_MIN_IMAGES) & (small >= min_share * total)
    return np.where(filled, q, np.nan), g0, g1


def calibrate_splits(split_q: np.ndarray, random_q: np.ndarray, *, cut: float = 0.5) -> tuple[Calibration | None, np.ndarray]:
    """The probability that each identity holds two people: ``(calibration, score (C,))``.

    The impostor mixture over ``180 -`` :func:`merge_position` of the two groups' ``q``
    (higher for less alike), with the fixed component measured on random pairs of
    identities (two people) and the free Gaussian one person cut in two; NaN where
    ``split_q`` is NaN; ``(None, NaN)`` with too few values. A split's ``q`` is at most
    ``merge_similarity(180 - threshold)``. Groups more alike than the highest
    ``REFERENCE_TAIL`` of the random pairs score 0.
    """
    cal, score = calibrate(180.0 - merge_position(split_q), 180.0 - merge_position(random_q), cut=cut)
    if cal is not None:  # and only groups as unlike as two random people mostly are
        with np.errstate(invalid="ignore"):
            score = np.where(split_q <= np.quantile(random_q, 1.0 - REFERENCE_TAIL), score, np.where(np.isnan(score), np.nan, 0.0))
    return cal, score
