"""Purification decisions: every rule a documented function, combined by :func:`decide`.

Notation: N samples, C identities, K sub-centers, D embedding size. Inputs are arrays
only (embeddings, labels, sub-centers); the output is one action and one reason per
sample plus per-identity and per-group results. Rules apply in this order, each on
what the previous ones left (defaults in :mod:`cleanface.purify.settings`):

1. **non-finite**: a NaN/inf embedding is dropped (reason ``non-finite embedding``);
2. **drop**: angle to the own dominant sub-center strictly above ``threshold``
   (optionally also: nearest sub-center not the dominant one);
3. **merge**: identities whose dominant sub-centers lie closer than ``merge_angle``
   (FAISS kNN over the dominant sub-centers, connected components); the largest member
   keeps its name, the kept images of the others get ``merge``;
4. **split**: two strong sub-centers far apart; with ``split`` the images nearest the
   second one (within ``threshold`` of it) form ``<name>#2`` (``new-identity``);
5. **relabel**: a dropped image much closer to another identity's dominant sub-center
   moves there (FAISS search over the dominant sub-centers, own identity skipped);
6. **outlier groups**: HDBSCAN over the images still dropped; with
   ``keep_outlier_groups`` each group becomes an identity ``outlier-group-<n>``;
7. **near-duplicates**: FAISS kNN over all samples; pairs with cosine >= ``dup_cos``
   are reported; with ``dedup`` each group of duplicates keeps its first image only;
8. **advice**: the angle where a two-Gaussian mixture of the angles says noisy becomes
   likelier than clean, reported beside ``threshold``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cleanface.purify import _faiss
from cleanface.purify._memory import release_free_memory
from cleanface.purify.advice import advise_threshold
from cleanface.purify.analysis import (
    IdentityStats,
    angle_to_dominant,
    cos_to_degrees,
    dominant_subcenters,
    identity_stats,
    l2_normalize,
    nearest_subcenter,
    non_dominant,
    subcenter_votes,
    unit_rows,
)
from cleanface.purify.outliers import components, outlier_groups
from cleanface.purify.settings import PurifySettings

ACTIONS = ("keep", "drop", "relabel", "merge", "dedup", "new-identity")
KEEP, DROP, RELABEL, MERGE, DEDUP, NEW_IDENTITY = range(len(ACTIONS))
IN_OUTPUT = (KEEP, RELABEL, MERGE, NEW_IDENTITY)

REASONS = (
    "",
    "angle above threshold",
    "non-dominant sub-center",
    "non-finite embedding",
    "closer to another identity",
    "identity merged",
    "near-duplicate",
    "second sub-center group",
    "outlier group",
)
(R_NONE, R_ANGLE, R_NON_DOMINANT, R_NON_FINITE, R_CLOSER, R_MERGED, R_DUPLICATE, R_SPLIT, R_OUTLIER_GROUP) = range(len(REASONS))

RELABEL_CANDIDATES = 4  # dominant sub-centers searched per dropped image (own identity skipped)
MERGE_NEIGHBOURS = 10  # neighbours searched per dominant sub-center for merges
DUP_NEIGHBOURS = 5  # neighbours searched per sample for near-duplicates
DUP_NPROBE = 4  # IVF cells searched for near-duplicates: pairs at cosine >= 0.98 almost always share a cell
SAMPLE_STORAGE = "float16"  # how the IVF index of all samples keeps them: 1 KB per 512-d image instead of 2 KB; pairs are re-scored in float32
REPORTED_DUPLICATES = 1000  # pairs listed in full in the summary (all are in analysis.npz)


@dataclass
class Decisions:
    """What :func:`decide` found; per-sample arrays have shape (N,).

    Attributes
    ----------
    action, reason : ndarray (N,), int8
        Codes into :data:`ACTIONS` and :data:`REASONS`.
    new_label : ndarray (N,), int64
        Index into ``names`` of the output identity; -1 when the image leaves the set.
    angle : ndarray (N,), float32
        Degrees to the own dominant sub-center (NaN for non-finite embeddings).
    cos : ndarray (N, K), float32
        Cosine to each own sub-center.
    nearest : ndarray (N,), int64
        Nearest own sub-center (-1 for non-finite).
    dominant : ndarray (N,), int64
        The own identity's dominant sub-center.
    finite : ndarray (N,), bool
    best_other, best_other_angle : ndarray (N,)
        Nearest other identity by dominant sub-center and its angle, for the images that
        the angle rules dropped (-1 / NaN elsewhere).
    outlier_group : ndarray (N,), int64
        HDBSCAN group among the dropped images, -1 for none.
    names : list of str
        Output identity names: the C input names, then new identities.
    dominant_by_identity : ndarray (C,), int64
    stats : IdentityStats
    merges, splits, outlier_groups : list of dict
    duplicate_pairs : ndarray (P, 2), int64; duplicate_cos : ndarray (P,), float32
    advice : dict
        ``{"threshold": float or None, "mixture": dict or None}``.
    faiss : dict
        Factory strings (with search parameters) of the indexes used.
    outlier_info : dict
    timings : dict of str to float
        Seconds per stage (not deterministic; kept out of the summary).
    """

    action: np.ndarray
    reason: np.ndarray
    new_label: np.ndarray
    angle: np.ndarray
    cos: np.ndarray
    nearest: np.ndarray
    dominant: np.ndarray
    finite: np.ndarray
    best_other: np.ndarray
    best_other_angle: np.ndarray
    outlier_group: np.ndarray
    names: list[str]
    dominant_by_identity: np.ndarray
    stats: IdentityStats
    merges: list[dict] = field(default_factory=list)
    splits: list[dict] = field(default_factory=list)
    outlier_groups: list[dict] = field(default_factory=list)
    duplicate_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    duplicate_cos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    advice: dict = field(default_factory=dict)
    faiss: dict = field(default_factory=dict)
    outlier_info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        """Which samples are in the cleaned dataset: bool (N,)."""
        return np.isin(self.action, IN_OUTPUT)

    def action_counts(self) -> dict[str, int]:
        """Images per action, every action listed."""
        counts = np.bincount(self.action, minlength=len(ACTIONS))
        return {a: int(c) for a, c in zip(ACTIONS, counts)}

    def reason_counts(self) -> dict[str, int]:
        """Images per non-empty reason."""
        counts = np.bincount(self.reason, minlength=len(REASONS))
        return {r: int(c) for r, c in zip(REASONS, counts) if r and c}


# -- the rules --------------------------------------------------------------------------------
def drop_by_angle(angle: np.ndarray, threshold: float) -> np.ndarray:
    """Images whose angle to the dominant sub-center is strictly above ``threshold`` degrees: bool (N,).

    An angle equal to the threshold keeps the image; NaN angles are not dropped here.
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(angle) > threshold


def merge_groups(
    dominant_vectors: np.ndarray, identities: np.ndarray, counts: np.ndarray, merge_angle: float, built: "_faiss.BuiltIndex"
) -> tuple[np.ndarray, list[dict]]:
    """Identities whose dominant sub-centers lie closer than ``merge_angle`` degrees, grouped.

    Parameters
    ----------
    dominant_vectors : ndarray (M, D)
        Normalised dominant sub-centers of the M identities that have one.
    identities : ndarray (M,)
        Their labels.
    counts : ndarray (C,)
        Images per identity (the largest member of a group keeps its name; ties go to
        the lowest label).
    built : BuiltIndex
        Index over ``dominant_vectors``.

    Returns
    -------
    merge_to : ndarray (C,), int64
        The label each identity merges into (itself when not merged).
    groups : list of dict
        ``{"labels": [...], "into": label, "min_angle": deg, "max_angle": deg}`` per group.
    """
    num_classes = len(counts)
    merge_to = np.arange(num_classes, dtype=np.int64)
    m = len(identities)
    if m < 2:
        return merge_to, []
    scores, ids = _faiss.self_search(built, MERGE_NEIGHBOURS + 1) if built.index.ntotal == m else \
        _faiss.search(built, dominant_vectors, MERGE_NEIGHBOURS + 1)
    rows = np.repeat(np.arange(m), ids.shape[1])
    cols, sc = ids.ravel(), scores.ravel()
    angles = cos_to_degrees(sc)
    keep = (cols >= 0) & (cols != rows) & (angles < merge_angle)
    a, b, ang = rows[keep], cols[keep], angles[keep]
    comp = components(m, a, b)
    edge_min = np.full(m, np.inf)
    edge_max = np.full(m, -np.inf)
    np.minimum.at(edge_min, comp[a], ang)
    np.maximum.at(edge_max, comp[a], ang)
    groups = []
    for g, members in members_by_group(comp, min_size=2):
        labels = identities[members]
        into = int(labels[np.lexsort((labels, -counts[labels]))[0]])
        merge_to[labels] = into
        groups.append({"labels": sorted(int(x) for x in labels), "into": into,
                       "min_angle": round(float(edge_min[g]), 4), "max_angle": round(float(edge_max[g]), 4)})
    return merge_to, groups


def split_candidates(votes: np.ndarray, centers: np.ndarray, split_angle: float, min_share: float) -> list[dict]:
    """Identities whose two most voted sub-centers each hold ``min_share`` of the votes and lie more than ``split_angle`` apart.

    Parameters
    ----------
    votes : ndarray (C, K)
    centers : ndarray (C, K, D), normalised

    Returns
    -------
    list of dict
        ``{"label", "subcenters": [first, second], "shares": [..], "angle": deg}``; ties in
        votes go to the lower sub-center index.
    """
    if votes.shape[1] < 2:
        return []
    total = votes.sum(axis=1)
    order = np.argsort(-votes, axis=1, kind="stable")
    first, second = order[:, 0], order[:, 1]
    rows = np.arange(len(votes))
    with np.errstate(invalid="ignore", divide="ignore"):
        s1 = votes[rows, first] / total
        s2 = votes[rows, second] / total
    strong = (total > 0) & (s1 >= min_share) & (s2 >= min_share)
    out = []
    for c in np.flatnonzero(strong):
        ang = float(cos_to_degrees(np.dot(centers[c, first[c]].astype(np.float32), centers[c, second[c]].astype(np.float32))))
        if ang > split_angle:
            out.append({"label": int(c), "subcenters": [int(first[c]), int(second[c])],
                        "shares": [round(float(s1[c]), 4), round(float(s2[c]), 4)], "angle": round(ang, 4)})
    return out


def best_other_identity(
    queries: np.ndarray, own: np.ndarray, identities: np.ndarray, built: "_faiss.BuiltIndex", *, silent: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the nearest dominant sub-center of another identity: (label int64 (Q,), angle float32 (Q,)).

    The index holds the dominant sub-centers of ``identities``; the top
    ``RELABEL_CANDIDATES + 1`` are searched and the own identity skipped; -1 / NaN when
    none is left.
    """
    q = len(queries)
    label = np.full(q, -1, dtype=np.int64)
    angle = np.full(q, np.nan, dtype=np.float32)
    if q == 0 or len(identities) == 0:
        return label, angle
    scores, ids = _faiss.search(built, queries, RELABEL_CANDIDATES + 1, silent=silent, what="relabel search")
    cand = np.where(ids >= 0, identities[np.maximum(ids, 0)], -1)
    usable = (cand >= 0) & (cand != own[:, None])
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
    rows = np.repeat(np.arange(n), ids.shape[1])
    cols, sc = ids.ravel(), scores.ravel()
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
    if built.stores_float16:  # float16 scores only nominate: the pairs are scored again from the embeddings, in float32
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


def members_by_group(group: np.ndarray, *, min_size: int = 1) -> list[tuple[int, np.ndarray]]:
    """``(group id, sorted member positions)`` for each group id >= 0 with at least ``min_size`` members, by id (one sort)."""
    group = np.asarray(group, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    ordered = group[order]
    ids, starts, sizes = np.unique(ordered, return_index=True, return_counts=True)
    return [(int(g), order[st : st + sz]) for g, st, sz in zip(ids, starts, sizes) if g >= 0 and sz >= min_size]


def _unique_name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name = f"{base}-{n}"
        n += 1
    taken.add(name)
    return name


class _Clock:
    def __init__(self, hook: Callable[[str], None] | None) -> None:
        self.hook, self.timings, self.name, self.start = hook, {}, None, 0.0

    def stage(self, name: str | None) -> None:
        now = time.perf_counter()
        if self.name is not None:
            self.timings[self.name] = round(self.timings.get(self.name, 0.0) + now - self.start, 4)
        self.name, self.start = name, now
        if self.hook is not None:
            self.hook(name or "done")


# -- the combination ------------------------------------------------------------------------------
def decide(
    embeddings: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    settings: PurifySettings | None = None,
    *,
    names: list[str] | None = None,
    silent: bool = True,
    stage_hook: Callable[[str], None] | None = None,
) -> Decisions:
    """Apply every rule (see the module docstring) and return the decisions.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D)
        Any float dtype; a memmap is read in chunks.
    labels : ndarray of shape (N,), int in [0, C)
    centers : ndarray of shape (C, K, D)
        Sub-centers of the trained head (normalised here, without a copy when they
        already are); float16 halves their memory at millions of identities.
    settings : PurifySettings, optional
        Defaults when None.
    names : list of str, optional
        Identity names (length C); ``"0" .. "C-1"`` when None. New identities are
        named after them.
    stage_hook : callable, optional
        Called with each stage's name as it starts (``"done"`` at the end); for
        benchmarks.

    Returns
    -------
    Decisions
    """
    settings = settings or PurifySettings()
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    centers = unit_rows(centers)
    num_classes, k = centers.shape[:2]
    names = [str(c) for c in range(num_classes)] if names is None else list(names)
    if len(names) != num_classes:
        raise ValueError(f"names must list the {num_classes} identities of centers, got {len(names)}")
    n = len(labels)
    clock = _Clock(stage_hook)

    # 1-2. analysis and the angle rule
    clock.stage("analysis")
    nearest, cos = nearest_subcenter(embeddings, labels, centers)
    finite = nearest >= 0  # nearest is -1 exactly for the rows holding NaN or inf (one pass over the embeddings, not two)
    dominant_by_identity = dominant_subcenters(nearest, labels, num_classes, k)
    angle = angle_to_dominant(cos, labels, dominant_by_identity)
    not_dominant = non_dominant(nearest, labels, dominant_by_identity)
    votes = subcenter_votes(nearest, labels, num_classes, k)
    counts = np.bincount(labels, minlength=num_classes)

    action = np.full(n, KEEP, dtype=np.int8)
    reason = np.full(n, R_NONE, dtype=np.int8)
    over = finite & drop_by_angle(angle, settings.threshold)
    action[over], reason[over] = DROP, R_ANGLE
    if settings.drop_non_dominant:
        nd = finite & not_dominant & ~over
        action[nd], reason[nd] = DROP, R_NON_DOMINANT
    action[~finite], reason[~finite] = DROP, R_NON_FINITE
    new_label = labels.copy()
    out_names = list(names)
    taken = set(out_names)

    # 3. merges, over the dominant sub-centers
    clock.stage("merge")
    has_dom = np.flatnonzero(dominant_by_identity >= 0)
    dom_vectors = centers[has_dom, dominant_by_identity[has_dom]] if len(has_dom) else np.zeros((0, centers.shape[2]), np.float32)
    faiss_info: dict[str, str] = {}
    dom_index = None
    if len(has_dom):
        dom_index = _faiss.build_index(dom_vectors, exact_below=settings.exact_below, seed=settings.seed, what="sub-centers")
        faiss_info["subcenters"] = dom_index.describe()
        merge_to, merges = merge_groups(dom_vectors, has_dom, counts, settings.merge_angle, dom_index)
    else:
        merge_to, merges = np.arange(num_classes, dtype=np.int64), []
    if settings.merge:
        moved = (action == KEEP) & (merge_to[labels] != labels)
        action[moved], reason[moved] = MERGE, R_MERGED
        new_label[moved] = merge_to[labels[moved]]
    else:
        merge_to = np.arange(num_classes, dtype=np.int64)

    # 4. splits
    clock.stage("split")
    splits = split_candidates(votes, centers, settings.split_angle, settings.split_min_share)
    if settings.split and splits:
        near_angle = cos_to_degrees(cos[np.arange(n), np.maximum(nearest, 0)])
        for s in splits:
            c, second = s["label"], s["subcenters"][1]
            new_id = len(out_names)
            out_names.append(_unique_name(f"{names[c]}#2", taken))
            s["new_identity"] = out_names[-1]
            with np.errstate(invalid="ignore"):
                moved = (labels == c) & (nearest == second) & finite & (near_angle <= settings.threshold)
            action[moved], reason[moved], new_label[moved] = NEW_IDENTITY, R_SPLIT, new_id

    # 5. relabel the dropped images that sit near another identity
    clock.stage("relabel")
    candidates = np.flatnonzero((action == DROP) & finite)
    best_other = np.full(n, -1, dtype=np.int64)
    best_other_angle = np.full(n, np.nan, dtype=np.float32)
    if dom_index is not None and len(candidates):
        label_c, angle_c = best_other_identity(embeddings[candidates], labels[candidates], has_dom, dom_index, silent=silent)
        best_other[candidates], best_other_angle[candidates] = label_c, angle_c
        if settings.relabel:
            with np.errstate(invalid="ignore"):
                ok = (label_c >= 0) & (angle_c < settings.relabel_angle) & (angle[candidates] - angle_c >= settings.relabel_margin)
            ok &= merge_to[np.maximum(label_c, 0)] != merge_to[labels[candidates]]
            moved = candidates[ok]
            action[moved], reason[moved] = RELABEL, R_CLOSER
            new_label[moved] = merge_to[label_c[ok]]

    dom_index = dom_vectors = None  # freed before the sample index is built (2 GB at 1M identities)
    release_free_memory()

    # 6. coherent groups among what is still dropped
    clock.stage("hdbscan")
    pool = np.flatnonzero((action == DROP) & finite)
    outlier_group = np.full(n, -1, dtype=np.int64)
    groups_out: list[dict] = []
    outlier_info: dict = {}
    if len(pool):
        local, outlier_info = outlier_groups(embeddings[pool], min_cluster_size=settings.outlier_min_cluster_size,
                                             cap=settings.outlier_cap, seed=settings.seed)
        outlier_group[pool] = local
        for g, positions in members_by_group(local):
            members = pool[positions]
            ids, cnt = np.unique(labels[members], return_counts=True)
            top = np.lexsort((ids, -cnt))[:3]
            entry = {"group": g, "size": int(len(members)), "first_indices": members[:20].tolist(),
                     "identities": {names[int(ids[t])]: int(cnt[t]) for t in top}}
            if settings.keep_outlier_groups:
                new_id = len(out_names)
                out_names.append(_unique_name(f"outlier-group-{g + 1}", taken))
                entry["new_identity"] = out_names[-1]
                action[members], reason[members], new_label[members] = NEW_IDENTITY, R_OUTLIER_GROUP, new_id
            groups_out.append(entry)

    # 7. near-duplicates over all samples
    clock.stage("dedup")
    pairs, pair_cos = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    if n >= 2:
        sample_index = _faiss.build_index(embeddings, exact_below=settings.exact_below, nprobe=DUP_NPROBE, seed=settings.seed,
                                          silent=silent, what="samples", storage=SAMPLE_STORAGE)
        faiss_info["samples"] = sample_index.describe()
        pairs, pair_cos = near_duplicates(embeddings, finite, settings.dup_cos, sample_index, silent=silent)
        del sample_index
        release_free_memory()
    if settings.dedup and len(pairs):
        inside = np.isin(action[pairs[:, 0]], IN_OUTPUT) & np.isin(action[pairs[:, 1]], IN_OUTPUT)
        comp = components(n, pairs[inside, 0], pairs[inside, 1])
        members = np.unique(pairs[inside].ravel())
        _, first = np.unique(comp[members], return_index=True)  # members are sorted: first = lowest index
        later = np.setdiff1d(members, members[first])
        action[later], reason[later] = DEDUP, R_DUPLICATE

    # 8. threshold advice and per-identity statistics
    clock.stage("advice")
    advised, mixture = advise_threshold(angle[finite], seed=settings.seed)
    new_label[~np.isin(action, IN_OUTPUT)] = -1
    stats = identity_stats(angle, labels, nearest, ~np.isin(action, IN_OUTPUT), num_classes, k)
    clock.stage(None)

    for m in merges:
        m["identities"] = [names[c] for c in m.pop("labels")]
        m["into"] = names[m["into"]]
        m["merged"] = bool(settings.merge)
    for s in splits:
        s["identity"] = names[s.pop("label")]
        s["applied"] = bool(settings.split)
    return Decisions(
        action=action, reason=reason, new_label=new_label, angle=angle, cos=cos, nearest=nearest,
        dominant=np.where(finite, dominant_by_identity[labels], -1), finite=finite,
        best_other=best_other, best_other_angle=best_other_angle, outlier_group=outlier_group,
        names=out_names, dominant_by_identity=dominant_by_identity, stats=stats,
        merges=merges, splits=splits, outlier_groups=groups_out, duplicate_pairs=pairs, duplicate_cos=pair_cos,
        advice={"threshold": None if advised is None else round(advised, 4), "mixture": mixture},
        faiss=faiss_info, outlier_info=outlier_info, timings=clock.timings,
    )

