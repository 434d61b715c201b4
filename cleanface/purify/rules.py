"""The purification rules, each a small function over one shared :class:`DecisionState`.

:func:`analyse` builds the state from the arrays; every ``apply_*`` rule then reads
some of its fields and sets others, as its docstring says (``Reads`` / ``Sets``), and
:func:`cleanface.purify.decisions.decide` calls them in order:
analysis, angle drop, merge, split, relabel, outlier groups, dedup, advice.
The pure helpers the rules use (:func:`drop_by_angle`, :func:`merge_groups`,
:func:`split_candidates`, :func:`members_by_group`) take and return plain arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cleanface.purify import _faiss, shards
from cleanface.purify._memory import release_free_memory
from cleanface.purify.advice import advise_threshold
from cleanface.purify.calibration import MIN_ANGLES, Calibration, calibrate
from cleanface.purify.analysis import (
    IdentityStats,
    angle_to_dominant,
    cos_to_degrees,
    dominant_subcenters,
    identity_stats,
    nearest_subcenter,
    non_dominant,
    subcenter_votes,
    unit_rows,
)
from cleanface.purify.codes import (
    DEDUP, DROP, IN_OUTPUT, KEEP, MERGE, NEW_IDENTITY, RELABEL,
    R_ANGLE, R_CLOSER, R_DUPLICATE, R_MERGED, R_NOISE_SCORE, R_NON_DOMINANT, R_NON_FINITE, R_NONE, R_OUTLIER_GROUP, R_SPLIT,
)
from cleanface.purify.identities import (
    MERGE_MIN_IMAGES, GroupSums, calibrate_merges, calibrate_splits, halves_similarity, member_and_half_sums, merge_similarity,
    nearest_identities, random_pair_similarities, similarity_angle,
)
from cleanface.purify.naming import unique_name
from cleanface.purify.neighbours import (
    DUP_NPROBE, RELABEL_CANDIDATES, SAMPLE_STORAGE, best_other_identity, close_pairs, near_duplicates, other_identity,
)
from cleanface.purify.outliers import components, outlier_groups
from cleanface.purify.settings import PurifySettings
from cleanface.purify.signals import impostor_angles, loo_mean_angle
from cleanface.purify.two_means import filled_similarity, two_means


SPLIT_FACES = 12  # first indices of each group a split reports (for the report's faces)
HIGH_IDENTITY_RATE = 0.3  # above this share of identities the calibrated merge / split rules warn (synthetic demo set, own model: 0.37)
HIGH_NOISE_RATE = 0.5  # above this estimated noise rate the calibrated rule warns (CelebA at 40% noise: 0.77)


@dataclass
class DecisionState:
    """What the rules share; per-sample arrays (N,), per-identity arrays (C,).

    Set by :func:`analyse` and only read afterwards: ``embeddings``, ``labels``, ``centers``
    (normalised), ``names``, ``silent``, ``nearest``, ``cos``, ``finite``,
    ``dominant_by_identity``, ``angle``, ``not_dominant``, ``votes``, ``counts`` (see
    :class:`cleanface.purify.decisions.Decisions` for their meaning).

    Written by the rules: ``action``, ``reason`` (codes of :mod:`cleanface.purify.codes`;
    start KEEP / R_NONE), ``new_label`` (starts as ``labels``), ``out_names`` and ``taken``
    (output names; new identities are appended), ``loo_angle`` / ``noise_score`` / ``calibration``
    (the calibrated drop rule's signal, score and fit; NaN / empty with the angle rule), ``merge_to`` (C,: the label each identity
    merges into, itself when not merged), ``subcenter_index`` / ``subcenter_identities``
    (the FAISS index over the dominant sub-centers and their labels, from the merge rule
    to the relabel rule, which frees it), and the results ``merges``, ``splits``,
    ``best_other``, ``best_other_angle``, ``outlier_group``, ``outlier_groups``,
    ``outlier_info``, ``duplicate_pairs``, ``duplicate_cos``, ``advice``, ``stats``,
    ``faiss``.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    names: list[str]
    silent: bool
    nearest: np.ndarray
    cos: np.ndarray
    finite: np.ndarray
    dominant_by_identity: np.ndarray
    angle: np.ndarray
    not_dominant: np.ndarray
    votes: np.ndarray
    counts: np.ndarray
    action: np.ndarray
    reason: np.ndarray
    new_label: np.ndarray
    out_names: list[str]
    taken: set[str]
    merge_to: np.ndarray
    best_other: np.ndarray
    best_other_angle: np.ndarray
    outlier_group: np.ndarray
    loo_angle: np.ndarray
    noise_score: np.ndarray
    split_group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    calibration: dict = field(default_factory=dict)
    identity_calibration: dict = field(default_factory=dict)
    labels_learned: bool = False
    centre_weights: np.ndarray | None = None
    subcenter_index: "_faiss.BuiltIndex | None" = None
    subcenter_identities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    merges: list[dict] = field(default_factory=list)
    splits: list[dict] = field(default_factory=list)
    outlier_groups: list[dict] = field(default_factory=list)
    outlier_info: dict = field(default_factory=dict)
    duplicate_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    duplicate_cos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    advice: dict = field(default_factory=dict)
    stats: IdentityStats | None = None
    faiss: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of input identities C."""
        return self.centers.shape[0]

    def mark(self, rows: np.ndarray, action: int, reason: int, new_label: np.ndarray | int | None = None) -> None:
        """Give ``rows`` (indices or a bool mask) ``action`` and ``reason`` and, when given, ``new_label``."""
        self.action[rows], self.reason[rows] = action, reason
        if new_label is not None:
            self.new_label[rows] = new_label

    def new_identity(self, base: str) -> int:
        """Append an output identity named after ``base`` (made unique); return its index into ``out_names``."""
        self.out_names.append(unique_name(base, self.taken))
        return len(self.out_names) - 1

    def dropped(self) -> np.ndarray:
        """Indices of the finite samples whose action is DROP, ascending."""
        return np.flatnonzero((self.action == DROP) & self.finite)


# -- the rules, in the order decide applies them ---------------------------------------------------
def analyse(
    embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray, names: list[str] | None = None, *, silent: bool = True,
    centre_weights: np.ndarray | None = None,
) -> DecisionState:
    """The sub-center analysis (:mod:`cleanface.purify.analysis`) as a fresh state: every image kept.

    Reads the arrays (``centers`` (C, K, D) are normalised without a copy when already
    unit); sets every field read-only for the rules, ``action = KEEP``, ``reason = R_NONE``,
    ``new_label = labels``, ``out_names = names`` (``"0" .. "C-1"`` when None),
    ``merge_to = arange(C)``, ``best_other = outlier_group = -1``, ``best_other_angle = loo_angle =
    noise_score = NaN``.
    ``centre_weights`` (N,), optional: how much each image counts in its identity's mean for
    the calibrated drop rule (an earlier round's kept images 1, its dropped ones 0).
    A ValueError when ``names`` does not list the C identities, or ``centre_weights`` the N images.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    centers = unit_rows(centers)
    num_classes, k = centers.shape[:2]
    names = [str(c) for c in range(num_classes)] if names is None else list(names)
    if len(names) != num_classes:
        raise ValueError(f"names must list the {num_classes} identities of centers, got {len(names)}")
    n = len(labels)
    if centre_weights is not None and np.shape(centre_weights) != (n,):
        raise ValueError(f"centre_weights must hold one weight per image ({n}), got shape {np.shape(centre_weights)}")
    nearest, cos = nearest_subcenter(embeddings, labels, centers)
    dominant_by_identity = dominant_subcenters(nearest, labels, num_classes, k)
    return DecisionState(
        embeddings=embeddings, labels=labels, centers=centers, names=names, silent=silent, nearest=nearest, cos=cos,
        finite=nearest >= 0,  # nearest is -1 exactly for the rows holding NaN or inf (one pass over the embeddings, not two)
        dominant_by_identity=dominant_by_identity, angle=angle_to_dominant(cos, labels, dominant_by_identity),
        not_dominant=non_dominant(nearest, labels, dominant_by_identity), votes=subcenter_votes(nearest, labels, num_classes, k),
        counts=np.bincount(labels, minlength=num_classes), action=np.full(n, KEEP, dtype=np.int8),
        reason=np.full(n, R_NONE, dtype=np.int8), new_label=labels.copy(), out_names=list(names), taken=set(names),
        merge_to=np.arange(num_classes, dtype=np.int64), best_other=np.full(n, -1, dtype=np.int64),
        best_other_angle=np.full(n, np.nan, dtype=np.float32), outlier_group=np.full(n, -1, dtype=np.int64),
        loo_angle=np.full(n, np.nan, dtype=np.float32), noise_score=np.full(n, np.nan, dtype=np.float32),
        split_group=np.full(n, -1, dtype=np.int8), centre_weights=None if centre_weights is None else np.asarray(centre_weights, dtype=np.float32),
    )


def apply_angle_drop(state: DecisionState, settings: PurifySettings) -> None:
    """Drop by angle, by non-dominant sub-center and for non-finite embeddings.

    Reads ``angle``, ``finite``, ``not_dominant``; ``settings.threshold``,
    ``settings.drop_non_dominant``. Sets ``action = DROP`` with ``reason`` R_ANGLE (angle
    strictly above the threshold), R_NON_DOMINANT (with ``drop_non_dominant``: nearest
    sub-center not the dominant one, angle within the threshold) and R_NON_FINITE.
    """
    over = state.finite & drop_by_angle(state.angle, settings.threshold)
    state.mark(over, DROP, R_ANGLE)
    _drop_the_rest(state, settings, over)


def _drop_the_rest(state: DecisionState, settings: PurifySettings, over: np.ndarray) -> None:
    """After a drop rule marked ``over``: non-dominant images (with ``drop_non_dominant``), then non-finite ones."""
    if settings.drop_non_dominant:
        state.mark(state.finite & state.not_dominant & ~over, DROP, R_NON_DOMINANT)
    state.mark(~state.finite, DROP, R_NON_FINITE)


def apply_calibrated_drop(state: DecisionState, settings: PurifySettings) -> None:
    """Drop by the noise score of the angle to the leave-one-out identity mean, calibrated on impostors.

    Reads ``embeddings``, ``labels``, ``finite``, ``not_dominant``, ``centre_weights``; ``settings.noise_cut``,
    ``settings.seed``, ``settings.drop_non_dominant``. Sets ``loo_angle``, ``noise_score``,
    ``calibration`` and ``action = DROP`` with ``reason`` R_NOISE_SCORE (noise score at least
    ``noise_cut``: angle at or above the calibrated threshold), R_NON_DOMINANT (with ``drop_non_dominant``) and R_NON_FINITE.
    A lone image of its identity has no leave-one-out mean and is kept. With too few
    images to calibrate (:func:`cleanface.purify.calibration.calibrate` returns None) it
    falls back to :func:`apply_angle_drop` and says so in ``calibration``.
    """
    loo, sums = loo_mean_angle(state.embeddings, state.labels, state.num_classes, state.centre_weights)
    impostors = impostor_angles(state.embeddings, state.labels, sums, seed=settings.seed)
    cal, scores = calibrate(loo, impostors, cut=settings.noise_cut)
    state.loo_angle, state.noise_score = loo, scores
    if cal is None:
        state.calibration = {"used": False, "reason": f"fewer than {MIN_ANGLES} images with a leave-one-out mean or impostor angles; "
                             f"dropped above {settings.threshold:g} degrees from the dominant sub-center instead"}
        apply_angle_drop(state, settings)
        return
    state.calibration = {"used": True, **cal.to_dict()}
    if cal.noise_rate > HIGH_NOISE_RATE:
        state.calibration["warning"] = (
            f"{cal.noise_rate:.0%} of the images look like impostors: the model may not tell these identities apart "
            "(train longer or start from a pretrained model), so many drops may be clean; review the most suspect list")
    if state.centre_weights is not None:
        state.calibration["centre_members"] = int((state.centre_weights > 0).sum())  # images an earlier round kept
    over = state.finite & (np.nan_to_num(scores, nan=0.0) >= settings.noise_cut)
    state.mark(over, DROP, R_NOISE_SCORE)
    _drop_the_rest(state, settings, over)


def apply_drop(state: DecisionState, settings: PurifySettings) -> None:
    """The drop rule ``settings.drop_rule`` names: :func:`apply_calibrated_drop` or :func:`apply_angle_drop`."""
    (apply_angle_drop if settings.drop_rule == "angle" else apply_calibrated_drop)(state, settings)


def _subcenter_index(state: DecisionState, settings: PurifySettings) -> None:
    """Build the FAISS index over the dominant sub-centers (``subcenter_index``, ``subcenter_identities``, ``faiss["subcenters"]``)."""
    has_dom = np.flatnonzero(state.dominant_by_identity >= 0)
    state.subcenter_identities = has_dom
    if not len(has_dom):
        return
    dom_vectors = state.centers[has_dom, state.dominant_by_identity[has_dom]]
    state.subcenter_index = _faiss.build_index(dom_vectors, exact_below=settings.exact_below, seed=settings.seed, what="sub-centers")
    state.faiss["subcenters"] = state.subcenter_index.describe()


def _merge_into(state: DecisionState, merge_to: np.ndarray) -> None:
    """Set ``merge_to`` and move the kept images of merged identities: ``action = MERGE``, ``reason = R_MERGED``."""
    state.merge_to = merge_to
    moved = (state.action == KEEP) & (merge_to[state.labels] != state.labels)
    state.mark(moved, MERGE, R_MERGED, merge_to[state.labels[moved]])


def apply_angle_merge(state: DecisionState, settings: PurifySettings) -> None:
    """Merge identities whose dominant sub-centers lie closer than ``settings.merge_angle``.

    Reads ``centers``, ``dominant_by_identity``, ``counts``, ``labels``, ``action``;
    ``settings.merge_angle``, ``merge``, ``exact_below``, ``seed``. Sets
    ``subcenter_index`` / ``subcenter_identities`` (kept for :func:`apply_relabel`),
    ``faiss["subcenters"]``, ``merges`` (always reported) and, with ``settings.merge``,
    ``merge_to`` and the kept images of merged identities: ``action = MERGE``,
    ``reason = R_MERGED``, ``new_label = merge_to[label]``.
    """
    _subcenter_index(state, settings)
    has_dom = state.subcenter_identities
    if state.subcenter_index is None:
        return
    dom_vectors = state.centers[has_dom, state.dominant_by_identity[has_dom]]
    merge_to, state.merges = merge_groups(dom_vectors, has_dom, state.counts, settings.merge_angle, state.subcenter_index)
    for m in state.merges:
        m["merged"] = bool(settings.merge)
    if settings.merge:
        _merge_into(state, merge_to)


def apply_calibrated_merge(state: DecisionState, settings: PurifySettings) -> None:
    """Propose (and merge the strongest) pairs of identities that look like one person, by a calibrated score.

    Reads ``embeddings``, ``labels``, ``action``, ``finite``, ``counts``; ``settings.merge_cut``,
    ``merge_auto_cut``, ``merge``, ``exact_below``, ``seed``. Over the images kept so far
    (:mod:`cleanface.purify.identities`): each identity's nearest other identity by
    similarity, the same-person reference of its own halves, the calibrated score. A pair
    is proposed when the two are each other's nearest and the score reaches ``merge_cut``;
    groups are the connected proposals. Sets ``identity_calibration["merge"]``, ``merges``
    (each with ``similarity`` and ``score``, the lowest over its pairs, and ``merged``) and,
    with ``settings.merge``, merges the groups whose every pair reaches ``merge_auto_cut``
    (``merge_to``, ``action = MERGE``) unless ``labels_learned``: a model trained on these
    labels merged wrong pairs at 0.9 on LFW (a politician into a singer), so its
    proposals wait for a person. With too few identities to calibrate it falls
    back to :func:`apply_angle_merge` and says so.
    """
    members = (state.action == KEEP) & state.finite
    sums, half_a, half_b = member_and_half_sums(state.embeddings, state.labels, state.num_classes, members, seed=settings.seed)  # one pass
    halves = halves_similarity(half_a, half_b)
    del half_a, half_b
    nearest, q = nearest_identities(sums, exact_below=settings.exact_below, seed=settings.seed, silent=state.silent)
    cal, score = calibrate_merges(q, halves, cut=settings.merge_cut)
    if cal is None:
        _fall_back(state, settings, "merge", apply_angle_merge, f"too few identities with two halves of {MERGE_MIN_IMAGES} kept images "
                   f"to calibrate; merged by the angle rule ({settings.merge_angle:g} degrees) instead")
        return
    _record_fit(state, "merge", cal, "same_person_rate", merge_similarity(cal.threshold),
                "look like another one under a second name: the embeddings may not tell these people apart, so the merge proposals "
                "are doubtful; review them before merging")
    ident = np.arange(state.num_classes)
    mutual = (nearest >= 0) & (nearest[np.maximum(nearest, 0)] == ident)
    proposed = np.flatnonzero(mutual & (np.nan_to_num(score, nan=0.0) >= settings.merge_cut) & (ident < nearest))
    a, b = proposed, nearest[proposed]
    auto = settings.merge and not state.labels_learned
    state.identity_calibration["merge"]["auto_merge"] = auto
    if settings.merge and not auto:
        state.identity_calibration["merge"]["auto_merge_reason"] = (
            "the embeddings come from a model trained on these labels, which pushes two names of one person apart: the "
            "proposals are reported, not merged (review them, or purify with --embeddings of a pretrained model)")
    state.merges, merge_to = calibrated_merge_groups(a, b, q[a], score[a], state.counts, settings.merge_auto_cut if auto else None)
    if auto:
        _merge_into(state, merge_to)


def _fall_back(state: DecisionState, settings: PurifySettings, rule: str, angle_rule: Callable[[DecisionState, PurifySettings], None],
               reason: str) -> None:
    """A calibrated identity rule without enough data: say why in ``identity_calibration[rule]`` and apply ``angle_rule``."""
    state.identity_calibration[rule] = {"used": False, "reason": reason}
    angle_rule(state, settings)


def _record_fit(state: DecisionState, rule: str, cal: Calibration, rate_key: str, similarity: float | None, doubt: str) -> None:
    """``identity_calibration[rule]``: the fit, its rate under ``rate_key``, the similarity at the cut, a warning above ``HIGH_IDENTITY_RATE``."""
    fit = {"used": True, **cal.to_dict(), rate_key: round(cal.noise_rate, 4), "similarity_threshold": similarity}
    if cal.noise_rate > HIGH_IDENTITY_RATE:
        fit["warning"] = f"{cal.noise_rate:.0%} of the identities {doubt}"
    state.identity_calibration[rule] = fit


def apply_merge(state: DecisionState, settings: PurifySettings) -> None:
    """The merge rule ``settings.merge_rule`` names: :func:`apply_calibrated_merge` or :func:`apply_angle_merge`."""
    (apply_angle_merge if settings.merge_rule == "angle" else apply_calibrated_merge)(state, settings)


def apply_angle_split(state: DecisionState, settings: PurifySettings) -> None:
    """Report identities with two strong sub-centers far apart and, with ``settings.split``, split them.

    Reads ``votes``, ``centers``, ``cos``, ``nearest``, ``finite``, ``labels``, ``names``;
    ``settings.split_angle``, ``split_min_share``, ``split``, ``threshold``. Sets
    ``splits`` and, with ``settings.split``, a new identity ``<name>#2`` per split
    (``out_names``, ``split["new_identity"]``) holding the identity's images nearest its
    second sub-center within the threshold of it: ``action = NEW_IDENTITY``,
    ``reason = R_SPLIT``, whatever the earlier rules decided for them.
    """
    state.splits = split_candidates(state.votes, state.centers, settings.split_angle, settings.split_min_share)
    if not state.splits:
        return
    near_angle = cos_to_degrees(state.cos[np.arange(state.n), np.maximum(state.nearest, 0)])
    for s in state.splits:
        s["applied"] = bool(settings.split)
        c, second = s["label"], s["subcenters"][1]
        with np.errstate(invalid="ignore"):
            moved = (state.labels == c) & (state.nearest == second) & state.finite & (near_angle <= settings.threshold)
        mark_split_groups(state, state.labels == c, moved)
        if settings.split:
            new_id = state.new_identity(f"{state.names[c]}#2")
            s["new_identity"] = state.out_names[new_id]
            state.mark(moved, NEW_IDENTITY, R_SPLIT, new_id)


def mark_split_groups(state: DecisionState, identity: np.ndarray, moving: np.ndarray) -> None:
    """Record a split proposal's groups in ``state.split_group``: 1 for the images that would form ``<name>#2``, 0 for the rest of the identity.

    ``identity`` and ``moving`` are masks (N,) or index arrays; a later ``--split`` (or an
    accepted review, ``cleanface apply``) moves exactly the images marked 1.
    """
    state.split_group[identity] = 0
    state.split_group[moving] = 1


def apply_calibrated_split(state: DecisionState, settings: PurifySettings) -> None:
    """Report identities whose kept images fall into two groups that look like two people; with ``settings.split``, split them.

    Reads ``embeddings``, ``labels``, ``action``, ``finite``, ``names``; ``settings.split_cut``,
    ``split_min_share``, ``split``, ``seed``. Over the images kept so far (merged ones
    included): spherical 2-means inside each identity, the similarity of its two groups
    when both are well filled, the two-people reference of random identity pairs, the
    calibrated score. Sets ``identity_calibration["split"]``, ``splits`` (score at least
    ``split_cut``: ``{"label", "sizes", "similarity", "angle", "score", "groups"
    (first indices of each group), "applied"}``) and, with ``settings.split``, a new
    identity ``<name>#2`` per split holding the smaller group: ``action = NEW_IDENTITY``,
    ``reason = R_SPLIT``. With too few identities to calibrate it falls back to
    :func:`apply_angle_split` and says so.
    """
    members = np.isin(state.action, (KEEP, MERGE)) & state.finite
    two = two_means(state.embeddings, state.labels, state.num_classes, members)  # one pass: groups, their similarity, the member sums
    group, q = two.group, filled_similarity(two, settings.split_min_share)
    reference = random_pair_similarities(GroupSums(two.member_sums, two.sizes.sum(axis=1)), seed=settings.seed)
    cal, score = calibrate_splits(q, reference, cut=settings.split_cut)
    if cal is None:
        _fall_back(state, settings, "split", apply_angle_split, "too few identities with two well-filled groups to calibrate; "
                   f"split by the sub-center rule ({settings.split_angle:g} degrees) instead")
        return
    _record_fit(state, "split", cal, "two_people_rate", None if cal.threshold is None else merge_similarity(180.0 - cal.threshold),
                "look like two people: the embeddings may not hold one person together, so the split proposals are doubtful; "
                "review them before splitting")
    state.splits = []
    for c in np.flatnonzero(np.nan_to_num(score, nan=0.0) >= settings.split_cut):
        rows = [np.flatnonzero((state.labels == c) & (group == g)) for g in (0, 1)]
        moving = 1 if len(rows[1]) <= len(rows[0]) else 0
        mark_split_groups(state, rows[1 - moving], rows[moving])
        entry = {"label": int(c), "sizes": [int(two.sizes[c, 0]), int(two.sizes[c, 1])], "similarity": round(float(q[c]), 4),
                 "angle": round(float(similarity_angle(q[c])), 4), "score": round(float(score[c]), 4),
                 "groups": [r[:SPLIT_FACES].tolist() for r in rows], "applied": bool(settings.split)}
        if settings.split:
            new_id = state.new_identity(f"{state.names[c]}#2")
            entry["new_identity"] = state.out_names[new_id]
            state.mark(rows[moving], NEW_IDENTITY, R_SPLIT, new_id)
        state.splits.append(entry)


def apply_split(state: DecisionState, settings: PurifySettings) -> None:
    """The split rule ``settings.split_rule`` names: :func:`apply_calibrated_split` or :func:`apply_angle_split`."""
    (apply_angle_split if settings.split_rule == "angle" else apply_calibrated_split)(state, settings)


def apply_relabel(state: DecisionState, settings: PurifySettings) -> None:
    """Move dropped images that sit near another (output) identity there; free the sub-center index.

    Reads ``action``, ``finite``, ``embeddings``, ``labels``, ``angle``, ``merge_to``,
    ``subcenter_index``, ``subcenter_identities``; ``settings.relabel``,
    ``relabel_angle``, ``relabel_margin``. For each finite dropped image, the
    ``RELABEL_CANDIDATES + 1`` nearest dominant sub-centers are searched and every
    candidate in the image's own merge group (``merge_to`` equal to its own) skipped; the
    nearest one left sets ``best_other`` / ``best_other_angle``. With ``settings.relabel``
    an image whose candidate lies below ``relabel_angle`` and at least ``relabel_margin``
    nearer than its own dominant sub-center gets ``action = RELABEL``,
    ``reason = R_CLOSER``, ``new_label = merge_to[candidate]``. Sets
    ``subcenter_index = None`` at the end.
    """
    candidates = state.dropped()
    if state.subcenter_index is None and len(candidates):
        _subcenter_index(state, settings)
    if state.subcenter_index is not None and len(candidates):
        own = state.labels[candidates]
        if getattr(shards.current(), "distributed", False):  # the queries on the workers, each with the index from a file
            from cleanface.purify.sharded_search import search_on_workers

            scores, ids = search_on_workers(state.subcenter_index, state.embeddings, candidates, RELABEL_CANDIDATES + 1)
            label_c, angle_c = other_identity(scores, ids, own, state.subcenter_identities, state.merge_to)
        else:
            label_c, angle_c = best_other_identity(state.embeddings[candidates], own, state.subcenter_identities,
                                                   state.subcenter_index, silent=state.silent, group=state.merge_to)
        state.best_other[candidates], state.best_other_angle[candidates] = label_c, angle_c
        if settings.relabel:
            with np.errstate(invalid="ignore"):
                ok = (label_c >= 0) & (angle_c < settings.relabel_angle) & (state.angle[candidates] - angle_c >= settings.relabel_margin)
            state.mark(candidates[ok], RELABEL, R_CLOSER, state.merge_to[label_c[ok]])
    state.subcenter_index = None  # freed before the sample index is built (2 GB at 1M identities)
    release_free_memory()


def apply_outlier_groups(state: DecisionState, settings: PurifySettings) -> None:
    """HDBSCAN groups among the images still dropped; with ``settings.keep_outlier_groups`` each becomes an identity.

    Reads ``action``, ``finite``, ``embeddings``, ``labels``, ``names``;
    ``settings.outlier_min_cluster_size``, ``outlier_cap``, ``seed``,
    ``keep_outlier_groups``. Sets ``outlier_group`` (group per dropped image, -1 for
    none), ``outlier_info``, ``outlier_groups`` (size, first indices, top-3 identities per
    group) and, with ``keep_outlier_groups``, a new identity ``outlier-group-<n>`` per
    group: ``action = NEW_IDENTITY``, ``reason = R_OUTLIER_GROUP``.
    """
    pool = state.dropped()
    if not len(pool):
        return
    local, state.outlier_info = outlier_groups(state.embeddings[pool], min_cluster_size=settings.outlier_min_cluster_size,
                                               cap=settings.outlier_cap, seed=settings.seed)
    state.outlier_group[pool] = local
    for g, positions in members_by_group(local):
        members = pool[positions]
        ids, cnt = np.unique(state.labels[members], return_counts=True)
        top = np.lexsort((ids, -cnt))[:3]
        entry = {"group": g, "size": int(len(members)), "first_indices": members[:20].tolist(),
                 "identities": {state.names[int(ids[t])]: int(cnt[t]) for t in top}}
        if settings.keep_outlier_groups:
            new_id = state.new_identity(f"outlier-group-{g + 1}")
            entry["new_identity"] = state.out_names[new_id]
            state.mark(members, NEW_IDENTITY, R_OUTLIER_GROUP, new_id)
        state.outlier_groups.append(entry)


def apply_dedup(state: DecisionState, settings: PurifySettings) -> None:
    """Report near-duplicate pairs over all samples; with ``settings.dedup`` keep the first image of each group.

    Reads ``embeddings``, ``finite``, ``action``; ``settings.dup_cos``, ``dedup``,
    ``exact_below``, ``seed``. Sets ``duplicate_pairs`` / ``duplicate_cos`` (pairs i < j
    with cosine >= ``dup_cos``, sorted), ``faiss["samples"]`` and, with ``dedup``, for
    every connected group of duplicates among the images in the output, all but the
    lowest index: ``action = DEDUP``, ``reason = R_DUPLICATE``.
    """
    n = state.n
    factory, params = _faiss.choose_factory(n, exact_below=settings.exact_below, nprobe=DUP_NPROBE, storage=SAMPLE_STORAGE)
    if n >= 2 and factory.endswith(_faiss.FP16_CODEC):  # cell by cell from the embeddings: no process holds the index of all samples
        from cleanface.purify.sharded_search import sharded_near_duplicates

        state.faiss["samples"] = f"{factory} {params}".strip()  # the cells of that index, scored by the runner
        state.duplicate_pairs, state.duplicate_cos = sharded_near_duplicates(state.embeddings, state.finite, settings.dup_cos, factory, params,
                                                                             settings.seed)
    elif n >= 2:
        sample_index = _faiss.build_index(state.embeddings, exact_below=settings.exact_below, nprobe=DUP_NPROBE, seed=settings.seed,
                                          silent=state.silent, what="samples", storage=SAMPLE_STORAGE)
        state.faiss["samples"] = sample_index.describe()
        state.duplicate_pairs, state.duplicate_cos = near_duplicates(state.embeddings, state.finite, settings.dup_cos,
                                                                     sample_index, silent=state.silent)
        del sample_index
        release_free_memory()
    pairs = state.duplicate_pairs
    if settings.dedup and len(pairs):
        inside = np.isin(state.action[pairs[:, 0]], IN_OUTPUT) & np.isin(state.action[pairs[:, 1]], IN_OUTPUT)
        comp = components(n, pairs[inside, 0], pairs[inside, 1])
        members = np.unique(pairs[inside].ravel())
        _, first = np.unique(comp[members], return_index=True)  # members are sorted: first = lowest index
        state.mark(np.setdiff1d(members, members[first]), DEDUP, R_DUPLICATE)


def apply_advice(state: DecisionState, settings: PurifySettings) -> None:
    """Threshold advice and per-identity statistics, once every action is final.

    Reads ``angle``, ``finite``, ``action``, ``labels``, ``nearest``, ``centers``;
    ``settings.seed``. Sets ``advice`` (``{"threshold", "mixture"}``, see
    :func:`cleanface.purify.advice.advise_threshold`), ``new_label = -1`` for the images
    not in the output, and ``stats`` (:func:`cleanface.purify.analysis.identity_stats`).
    """
    advised, mixture = advise_threshold(state.angle[state.finite], seed=settings.seed)
    state.advice = {"threshold": None if advised is None else round(advised, 4), "mixture": mixture}
    leaves = ~np.isin(state.action, IN_OUTPUT)
    state.new_label[leaves] = -1
    state.stats = identity_stats(state.angle, state.labels, state.nearest, leaves, state.num_classes, state.centers.shape[1])


# -- pure helpers ---------------------------------------------------------------------------------
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
    merge_to = np.arange(len(counts), dtype=np.int64)
    m = len(identities)
    if m < 2:
        return merge_to, []
    a, b, ang = close_pairs(dominant_vectors, built, merge_angle)
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


def calibrated_merge_groups(
    a: np.ndarray, b: np.ndarray, similarity: np.ndarray, score: np.ndarray, counts: np.ndarray, auto_cut: float | None
) -> tuple[list[dict], np.ndarray]:
    """Groups of the proposed pairs ``(a[i], b[i])`` and the labels they merge into.

    Each group (connected proposals) is ``{"labels", "into" (the largest member; ties to the
    lowest label), "similarity", "score" (the lowest over its pairs), "min_angle", "max_angle"
    (degrees ``arccos`` of the similarities), "merged"}``, sorted by its lowest label;
    ``merged`` when ``auto_cut`` is given and every pair's score reaches it, and then
    ``merge_to`` (C,) maps its members to ``into`` (every other label maps to itself).
    """
    merge_to = np.arange(len(counts), dtype=np.int64)
    if not len(a):
        return [], merge_to
    comp = components(len(counts), a, b)
    groups = []
    for g, _ in members_by_group(comp[a]):
        edges = np.flatnonzero(comp[a] == g)
        labels = np.unique(np.r_[a[edges], b[edges]])
        into = int(labels[np.lexsort((labels, -counts[labels]))[0]])
        angles = similarity_angle(similarity[edges])
        merged = auto_cut is not None and bool((score[edges] >= auto_cut).all())
        if merged:
            merge_to[labels] = into
        groups.append({"labels": labels.tolist(), "into": into, "similarity": round(float(similarity[edges].min()), 4),
                       "score": round(float(score[edges].min()), 4), "min_angle": round(float(angles.min()), 4),
                       "max_angle": round(float(angles.max()), 4), "merged": merged})
    groups.sort(key=lambda m: m["labels"][0])
    return groups, merge_to


def members_by_group(group: np.ndarray, *, min_size: int = 1) -> list[tuple[int, np.ndarray]]:
    """``(group id, sorted member positions)`` for each group id >= 0 with at least ``min_size`` members, by id (one sort)."""
    group = np.asarray(group, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    ordered = group[order]
    ids, starts, sizes = np.unique(ordered, return_index=True, return_counts=True)
    return [(int(g), order[st : st + sz]) for g, st, sz in zip(ids, starts, sizes) if g >= 0 and sz >= min_size]
