"""Each rule of cleanface.purify.rules on its own, on small hand-made states."""

import numpy as np
import pytest

from cleanface.purify.clock import StageClock
from cleanface.purify.codes import (
    DEDUP, DROP, KEEP, MERGE, NEW_IDENTITY, RELABEL, R_ANGLE, R_CLOSER, R_DUPLICATE, R_MERGED, R_NON_DOMINANT, R_NON_FINITE,
    R_NONE, R_OUTLIER_GROUP, R_SPLIT,
)
from cleanface.purify.naming import unique_name
from cleanface.purify.rules import (
    analyse,
    apply_advice,
    apply_angle_drop,
    apply_dedup,
    apply_merge,
    apply_outlier_groups,
    apply_relabel,
    apply_split,
    members_by_group,
)
from cleanface.purify.settings import PurifySettings
from tests.purify.conftest import D, axis, basis_centers, toward

FREE = 15  # axes from here on belong to no sub-center of up to 5 basis identities
DEFAULTS = PurifySettings()


def cluster(center: np.ndarray | int, n: int, start: int = 0, degrees: float = 15.0) -> list[np.ndarray]:
    """n unit samples at ``degrees`` from ``center`` (an axis or a unit vector), each leaning toward another free axis."""
    c = axis(center) if isinstance(center, int) else np.asarray(center, dtype=np.float64)
    t = np.radians(degrees)
    return [np.cos(t) * c + np.sin(t) * axis(FREE + (start + j) % (D - FREE)) for j in range(n)]


def state_of(rows, labels, centers, names=None, settings=DEFAULTS, upto=()):
    """``analyse`` then the rules named in ``upto``, in order."""
    state = analyse(np.stack(rows).astype(np.float32), np.array(labels), centers, names)
    for rule in upto:
        rule(state, settings)
    return state


# -- analyse ------------------------------------------------------------------------------------
def test_analyse_starts_with_every_image_kept():
    rows = cluster(0, 3) + cluster(4, 3) + [np.full(D, np.nan)]
    state = state_of(rows, [0, 0, 0, 1, 1, 1, 1], basis_centers(2), ["ann", "bob"])
    assert (state.action == KEEP).all() and (state.reason == R_NONE).all()
    assert state.new_label.tolist() == [0, 0, 0, 1, 1, 1, 1] and state.new_label is not state.labels
    assert state.finite.tolist() == [True] * 6 + [False] and state.nearest.tolist() == [0, 0, 0, 1, 1, 1, -1]
    assert state.dominant_by_identity.tolist() == [0, 1] and state.votes.tolist() == [[3, 0, 0], [0, 3, 0]]
    assert state.counts.tolist() == [3, 4] and state.merge_to.tolist() == [0, 1]
    np.testing.assert_allclose(state.angle[:6], 15, atol=1e-3)
    assert np.isnan(state.angle[6]) and (state.best_other == -1).all() and np.isnan(state.best_other_angle).all()
    assert state.out_names == ["ann", "bob"] and state.taken == {"ann", "bob"} and (state.outlier_group == -1).all()
    assert analyse(np.stack(rows), np.zeros(7, int), basis_centers(2)).names == ["0", "1"]
    with pytest.raises(ValueError, match="names must list the 2 identities"):
        analyse(np.stack(rows), np.zeros(7, int), basis_centers(2), ["ann"])


# -- angle drop -----------------------------------------------------------------------------------
def test_angle_drop_sets_its_three_reasons():
    rows = cluster(0, 4) + [toward(0, 20, 75.0), toward(0, 21, 75.1), toward(0, 1, 60), np.full(D, np.inf)]
    state = state_of(rows, [0] * 8, basis_centers(1), upto=[apply_angle_drop])
    assert state.action.tolist() == [KEEP] * 5 + [DROP, KEEP, DROP]
    assert state.reason.tolist() == [R_NONE] * 5 + [R_ANGLE, R_NONE, R_NON_FINITE]
    strict = state_of(rows, [0] * 8, basis_centers(1), settings=PurifySettings(drop_non_dominant=True), upto=[apply_angle_drop])
    assert strict.reason[6] == R_NON_DOMINANT and strict.action[6] == DROP  # nearest sub-center 1, not the dominant 0
    assert strict.reason[5] == R_ANGLE  # above the threshold: the angle is the reason


# -- merge ------------------------------------------------------------------------------------------
def merge_rows():
    centers = basis_centers(3)
    centers[1, 0] = toward(0, 3, 20)  # identity 1's dominant sub-center lies 20 deg from identity 0's
    rows = cluster(0, 6) + cluster(toward(0, 3, 20), 5, degrees=6) + cluster(6, 5)
    return rows, [0] * 6 + [1] * 5 + [2] * 5, centers


def test_merge_moves_the_kept_images_of_the_smaller_identity():
    rows, labels, centers = merge_rows()
    state = analyse(np.stack(rows).astype(np.float32), np.array(labels), centers)
    state.action[6] = DROP  # a dropped image stays dropped
    apply_merge(state, DEFAULTS)
    assert state.merge_to.tolist() == [0, 0, 2] and state.faiss["subcenters"] == "Flat"
    assert state.subcenter_index is not None and state.subcenter_identities.tolist() == [0, 1, 2]
    assert state.merges == [{"labels": [0, 1], "into": 0, "min_angle": pytest.approx(20, abs=1e-2), "max_angle": pytest.approx(20, abs=1e-2)}]
    assert state.action[6] == DROP and state.action[7:11].tolist() == [MERGE] * 4
    assert state.reason[7:11].tolist() == [R_MERGED] * 4 and state.new_label[7:11].tolist() == [0] * 4
    assert (state.action[:6] == KEEP).all() and (state.action[11:] == KEEP).all()


def test_merge_only_reported_when_switched_off():
    rows, labels, centers = merge_rows()
    state = state_of(rows, labels, centers, settings=PurifySettings(merge=False), upto=[apply_merge])
    assert len(state.merges) == 1 and state.merge_to.tolist() == [0, 1, 2] and (state.action == KEEP).all()


# -- split -------------------------------------------------------------------------------------------
def split_rows():
    rows = cluster(0, 5) + cluster(1, 4, start=2) + [toward(2, 20, 10)] + cluster(3, 5)
    return rows, [0] * 10 + [1] * 5, basis_centers(2)


def test_split_reports_and_on_request_makes_a_new_identity():
    rows, labels, centers = split_rows()
    state = state_of(rows, labels, centers, ["sam", "tom"], upto=[apply_angle_drop, apply_split])
    assert state.splits == [{"label": 0, "subcenters": [0, 1], "shares": [0.5, 0.4], "angle": pytest.approx(90, abs=1e-3)}]
    assert state.out_names == ["sam", "tom"] and state.action[5:9].tolist() == [DROP] * 4
    state = state_of(rows, labels, centers, ["sam", "sam#2"], PurifySettings(split=True), upto=[apply_angle_drop, apply_split])
    assert state.out_names == ["sam", "sam#2", "sam#2-2"] and state.splits[0]["new_identity"] == "sam#2-2"
    assert state.action[5:9].tolist() == [NEW_IDENTITY] * 4 and state.reason[5:9].tolist() == [R_SPLIT] * 4
    assert state.new_label[5:9].tolist() == [2] * 4 and state.action[9] == DROP  # the third sub-center's image is not moved


# -- relabel -------------------------------------------------------------------------------------------
def test_relabel_moves_close_dropped_images_and_reports_the_others():
    rows = cluster(0, 5) + cluster(3, 5) + [toward(3, 20, 20), toward(3, 21, 60)]
    labels = [0] * 5 + [1] * 5 + [0, 0]
    state = state_of(rows, labels, basis_centers(2), upto=[apply_angle_drop, apply_merge, apply_relabel])
    assert state.action[10] == RELABEL and state.reason[10] == R_CLOSER and state.new_label[10] == 1
    assert state.best_other[10:].tolist() == [1, 1] and state.best_other_angle[10:] == pytest.approx([20, 60], abs=1e-3)
    assert state.action[11] == DROP and (state.best_other[:10] == -1).all()  # only dropped images are searched
    assert state.subcenter_index is None  # freed for the sample index
    off = state_of(rows, labels, basis_centers(2), settings=PurifySettings(relabel=False), upto=[apply_angle_drop, apply_merge, apply_relabel])
    assert off.action[10] == DROP and off.best_other[10] == 1


def relabel_merge_rows():
    """Identities 0 and 1 merge (dominant sub-centers 20 deg apart); image 16, labelled 0, lies 49 deg from 0, 29 from 1, 31 from 2."""
    centers = basis_centers(3)
    centers[1, 0] = toward(0, 3, 20)
    centers[2, 0] = toward(0, 3, 80)
    rows = cluster(0, 6) + cluster(toward(0, 3, 20), 5, degrees=6) + cluster(toward(0, 3, 80), 5, degrees=6) + [toward(0, 3, 49)]
    return rows, [0] * 6 + [1] * 5 + [2] * 5 + [0], centers


def test_relabel_skips_the_whole_merge_group_and_takes_the_next_candidate():
    rows, labels, centers = relabel_merge_rows()
    state = state_of(rows, labels, centers, settings=PurifySettings(threshold=45), upto=[apply_angle_drop, apply_merge, apply_relabel])
    assert state.merge_to.tolist() == [0, 0, 2]
    assert state.best_other[16] == 2 and state.best_other_angle[16] == pytest.approx(31, abs=1e-3)
    assert state.action[16] == RELABEL and state.new_label[16] == 2
    unmerged = state_of(rows, labels, centers, settings=PurifySettings(threshold=45, merge=False),
                        upto=[apply_angle_drop, apply_merge, apply_relabel])
    assert unmerged.best_other[16] == 1 and unmerged.action[16] == RELABEL and unmerged.new_label[16] == 1  # the nearest other


# -- outlier groups ---------------------------------------------------------------------------------------
def test_outlier_groups_among_the_dropped_images():
    first = [toward(20, 21 + j % 3, 3 + j) for j in range(8)]  # one outside person, spread over two labels
    second = [toward(16, 17 + j % 3, 2 + j) for j in range(6)]  # another, all under one label
    rows = cluster(0, 6) + cluster(3, 6) + first + second + [axis(7), axis(9), axis(11)]
    labels = [0] * 6 + [1] * 6 + [0, 1] * 4 + [1] * 6 + [0, 1, 0]
    state = state_of(rows, labels, basis_centers(2), ["ann", "bob"], upto=[apply_angle_drop, apply_outlier_groups])
    assert state.outlier_group.tolist() == [-1] * 12 + [0] * 8 + [1] * 6 + [-1] * 3
    assert state.outlier_groups[0] == {"group": 0, "size": 8, "first_indices": list(range(12, 20)), "identities": {"ann": 4, "bob": 4}}
    assert state.outlier_groups[1]["identities"] == {"bob": 6} and state.outlier_info["points"] == 17
    assert (state.action[12:] == DROP).all()
    kept = state_of(rows, labels, basis_centers(2), ["ann", "outlier-group-2"], PurifySettings(keep_outlier_groups=True),
                    upto=[apply_angle_drop, apply_outlier_groups])
    assert kept.out_names == ["ann", "outlier-group-2", "outlier-group-1", "outlier-group-2-2"]
    assert [g["new_identity"] for g in kept.outlier_groups] == ["outlier-group-1", "outlier-group-2-2"]
    assert kept.action[12:26].tolist() == [NEW_IDENTITY] * 14 and kept.reason[12] == R_OUTLIER_GROUP
    assert kept.new_label[12:26].tolist() == [2] * 8 + [3] * 6 and (kept.action[26:] == DROP).all()


def test_outlier_groups_without_dropped_images_leave_the_state_alone():
    state = state_of(cluster(0, 4), [0] * 4, basis_centers(1), upto=[apply_angle_drop, apply_outlier_groups])
    assert state.outlier_groups == [] and state.outlier_info == {} and (state.outlier_group == -1).all()


# -- dedup -----------------------------------------------------------------------------------------------------
def test_dedup_keeps_the_first_of_each_group_in_the_output():
    v, w = toward(0, 20, 10), toward(3, 21, 10)
    rows = [v, v, v * 0.999 + 0.02 * axis(22)] + cluster(0, 3, degrees=25) + [w, w]
    labels = [0] * 6 + [1] * 2
    state = state_of(rows, labels, basis_centers(2), upto=[apply_dedup])
    assert state.duplicate_pairs.tolist() == [[0, 1], [0, 2], [1, 2], [6, 7]] and (state.duplicate_cos >= 0.98).all()
    assert state.faiss["samples"] == "Flat" and (state.action == KEEP).all()
    state = analyse(np.stack(rows).astype(np.float32), np.array(labels), basis_centers(2))
    state.action[6] = DROP  # a dropped image neither is deduplicated nor keeps its twin out
    apply_dedup(state, PurifySettings(dedup=True))
    assert state.action.tolist() == [KEEP, DEDUP, DEDUP, KEEP, KEEP, KEEP, DROP, KEEP]
    assert state.reason[1] == R_DUPLICATE and state.reason[2] == R_DUPLICATE


# -- advice ------------------------------------------------------------------------------------------------------
def test_advice_finishes_labels_and_statistics():
    rows = cluster(0, 4, degrees=10) + [toward(0, 20, 80)] + cluster(3, 3, degrees=20)
    state = state_of(rows, [0] * 5 + [1] * 3, basis_centers(2), upto=[apply_angle_drop])
    state.mark([1], DEDUP, R_DUPLICATE)
    apply_advice(state, DEFAULTS)
    assert state.new_label.tolist() == [0, -1, 0, 0, -1, 1, 1, 1]
    assert state.stats.drop_share.tolist() == [pytest.approx(0.4), 0.0] and state.stats.count.tolist() == [5, 3]
    assert set(state.advice) == {"threshold", "mixture"}


# -- helpers --------------------------------------------------------------------------------------------------
def test_members_by_group_unique_name_and_clock():
    groups = members_by_group(np.array([2, -1, 0, 2, 0, 5]), min_size=2)
    assert [(g, m.tolist()) for g, m in groups] == [(0, [2, 4]), (2, [0, 3])]
    taken = {"a", "a-2"}
    assert unique_name("a", taken) == "a-3" and unique_name("b", taken) == "b" and taken == {"a", "a-2", "a-3", "b"}
    seen = []
    clock = StageClock(seen.append)
    for name in ("one", "two", "one", None):
        clock.stage(name)
    assert seen == ["one", "two", "one", "done"] and set(clock.timings) == {"one", "two"}
    assert all(t >= 0 for t in clock.timings.values())
