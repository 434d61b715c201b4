"""Purification decisions: the rules of :mod:`cleanface.purify.rules` combined by :func:`decide`.

Notation: N samples, C identities, K sub-centers, D embedding size. Inputs are arrays
only (embeddings, labels, sub-centers); the output is one action and one reason per
sample plus per-identity and per-group results. Rules apply in this order, each on
what the previous ones left (defaults in :mod:`cleanface.purify.settings`):

1. **non-finite**: a NaN/inf embedding is dropped (reason ``non-finite embedding``);
2. **drop**: by default the angle to the mean of the other images of the identity strictly
   above the threshold calibrated on impostor angles (:mod:`cleanface.purify.calibration`;
   the image's ``noise_score`` reaches ``noise_cut``); with ``drop_rule="angle"`` the
   angle to the own dominant sub-center strictly above ``threshold`` (either way,
   optionally also: nearest sub-center not the dominant one);
3. **merge**: by default pairs of identities, each the other's nearest by the similarity
   of their kept images, whose calibrated probability of being one person reaches
   ``merge_cut`` (:mod:`cleanface.purify.identities`); groups whose every pair reaches
   ``merge_auto_cut`` are merged, the largest member keeping its name and the kept
   images of the others getting ``merge``; with ``merge_rule="angle"`` identities whose
   dominant sub-centers lie closer than ``merge_angle`` (FAISS kNN, connected components);
4. **split**: by default identities whose kept images fall into two well-filled groups
   (spherical 2-means) whose calibrated probability of being two people reaches
   ``split_cut``; with ``split_rule="angle"`` two strong sub-centers far apart; reported,
   and with ``split`` one group forms ``<name>#2`` (``new-identity``);
5. **relabel**: a dropped image much closer to another identity's dominant sub-center
   moves there (FAISS search over the dominant sub-centers, the identities of its own
   merge group skipped);
6. **outlier groups**: HDBSCAN over the images still dropped; with
   ``keep_outlier_groups`` each group becomes an identity ``outlier-group-<n>``;
7. **near-duplicates**: FAISS kNN over all samples; pairs with cosine >= ``dup_cos``
   are reported; with ``dedup`` each group of duplicates keeps its first image only;
8. **advice**: the angle where a two-Gaussian mixture of the angles says noisy becomes
   likelier than clean, reported beside ``threshold``.

Where things live: the codes in :mod:`cleanface.purify.codes`, the rules and the state
they share in :mod:`cleanface.purify.rules`, the FAISS searches they use in
:mod:`cleanface.purify.neighbours`; every name is also importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cleanface.purify import shards
from cleanface.purify.analysis import IdentityStats
from cleanface.purify.clock import StageClock
from cleanface.purify.codes import (  # noqa: F401  (re-exported: the codes have always been importable from here)
    ACTIONS, DEDUP, DROP, IN_OUTPUT, KEEP, MERGE, NEW_IDENTITY, RELABEL, REASONS,
    R_ANGLE, R_CLOSER, R_DUPLICATE, R_MERGED, R_NOISE_SCORE, R_NONE, R_NON_DOMINANT, R_NON_FINITE, R_OUTLIER_GROUP, R_SPLIT,
)
from cleanface.purify.naming import unique_name
from cleanface.purify.neighbours import (  # noqa: F401  (re-exported)
    DUP_NEIGHBOURS, DUP_NPROBE, MERGE_NEIGHBOURS, RELABEL_CANDIDATES, SAMPLE_STORAGE,
    best_other_identity, exact_cosines, near_duplicates,
)
from cleanface.purify.rules import (  # noqa: F401  (re-exported)
    DecisionState, analyse, apply_advice, apply_angle_drop, apply_calibrated_drop, apply_dedup, apply_drop, apply_merge, apply_outlier_groups, apply_relabel,
    apply_split, drop_by_angle, members_by_group, merge_groups, split_candidates,
)
from cleanface.purify.settings import PurifySettings

REPORTED_DUPLICATES = 1000  # pairs listed in full in the summary (all are in analysis.npz)
_unique_name = unique_name  # the old private names
_Clock = StageClock


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
        the angle rules dropped (-1 / NaN elsewhere); with ``merge`` the identities of the
        image's own merge group do not count as other.
    outlier_group : ndarray (N,), int64
        HDBSCAN group among the dropped images, -1 for none.
    split_group : ndarray (N,), int8
        For the images of an identity with a split proposal: 1 in the group that forms
        ``<name>#2`` when the split is applied (``--split``, or accepted in a review), 0 in
        the rest; -1 elsewhere.
    loo_angle, noise_score : ndarray (N,), float32
        Degrees to the mean of the other images of the identity, and the calibrated
        probability that the label is wrong (NaN with ``drop_rule="angle"``, for lone
        images and non-finite embeddings). Sorting by ``noise_score`` ranks the images
        from most to least suspect.
    calibration : dict
        The calibrated rule's fit (:class:`cleanface.purify.calibration.Calibration`),
        ``{"used": False, "reason": ...}`` when it fell back, empty with the angle rule.
    identity_calibration : dict
        ``{"merge": ..., "split": ...}``: the calibrated merge and split rules' fits
        (mirrored degrees for merges, see :func:`cleanface.purify.identities.calibrate_merges`),
        or why they fell back; a key is absent when its rule is ``"angle"``.
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
    loo_angle: np.ndarray
    noise_score: np.ndarray
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
    calibration: dict = field(default_factory=dict)
    identity_calibration: dict = field(default_factory=dict)
    split_group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
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


def decide(
    embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray, settings: PurifySettings | None = None, *,
    names: list[str] | None = None, silent: bool = True, stage_hook: Callable[[str], None] | None = None,
    centre_weights: np.ndarray | None = None, labels_learned: bool = False, runner: Any = None,
) -> Decisions:
    """Apply every rule (see the module docstring), in order, and return the decisions.

    ``embeddings`` (N, D): any float dtype, a memmap is read in chunks; ``labels`` (N,)
    in [0, C); ``centers`` (C, K, D): the head's sub-centers (normalised here, without a
    copy when they already are; float16 halves them at millions of identities);
    ``settings``: defaults when None; ``names``: the C identity names (``"0" .. "C-1"``
    when None), after which new identities are named; ``stage_hook``: called with each
    stage's name as it starts (``"done"`` at the end), for benchmarks; ``centre_weights`` (N,):
    each image's weight in its identity's mean for the calibrated drop rule (an earlier
    round's decisions, :func:`cleanface.purify.reference.reference_weights`); ``labels_learned``:
    the embeddings come from a model trained on these very labels (purify with a run), whose
    merge proposals are reported but never merged without a person (see
    :func:`cleanface.purify.rules.apply_calibrated_merge`); ``runner``: where the passes over
    the embeddings run (:mod:`cleanface.purify.shards`: threads of this process by default, or
    a Dask cluster); the decisions are the same on every runner.
    """
    with shards.using(runner):
        return _decide(embeddings, labels, centers, settings, names=names, silent=silent, stage_hook=stage_hook,
                       centre_weights=centre_weights, labels_learned=labels_learned)


def _decide(embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray, settings: PurifySettings | None, *, names: list[str] | None,
            silent: bool, stage_hook: Callable[[str], None] | None, centre_weights: np.ndarray | None, labels_learned: bool) -> Decisions:
    settings = settings or PurifySettings()
    clock = StageClock(stage_hook)
    clock.stage("analysis")
    state = analyse(embeddings, labels, centers, names, silent=silent, centre_weights=centre_weights)
    state.labels_learned = bool(labels_learned)
    apply_drop(state, settings)
    clock.stage("merge")
    apply_merge(state, settings)
    clock.stage("split")
    apply_split(state, settings)
    clock.stage("relabel")
    apply_relabel(state, settings)
    clock.stage("hdbscan")
    apply_outlier_groups(state, settings)
    clock.stage("dedup")
    apply_dedup(state, settings)
    clock.stage("advice")
    apply_advice(state, settings)
    clock.stage(None)
    return to_decisions(state, settings, clock.timings)


def to_decisions(state: DecisionState, settings: PurifySettings, timings: dict[str, float]) -> Decisions:
    """The :class:`Decisions` of a state all rules have run on; merges and splits name their identities."""
    names = state.names
    for m in state.merges:
        m["identities"] = [names[c] for c in m.pop("labels")]
        m["into"] = names[m["into"]]
        m.setdefault("merged", bool(settings.merge))
    for s in state.splits:
        s["identity"] = names[s.pop("label")]
        s.setdefault("applied", bool(settings.split))
    return Decisions(
        action=state.action, reason=state.reason, new_label=state.new_label, angle=state.angle, cos=state.cos,
        nearest=state.nearest, dominant=np.where(state.finite, state.dominant_by_identity[state.labels], -1),
        finite=state.finite, best_other=state.best_other, best_other_angle=state.best_other_angle,
        outlier_group=state.outlier_group, loo_angle=state.loo_angle, noise_score=state.noise_score, names=state.out_names, dominant_by_identity=state.dominant_by_identity,
        stats=state.stats, merges=state.merges, splits=state.splits, outlier_groups=state.outlier_groups,
        duplicate_pairs=state.duplicate_pairs, duplicate_cos=state.duplicate_cos, advice=state.advice, faiss=state.faiss,
        outlier_info=state.outlier_info, calibration=state.calibration, identity_calibration=state.identity_calibration,
        split_group=state.split_group, timings=timings,
    )
