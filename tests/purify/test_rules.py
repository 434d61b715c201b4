"""Each rule of cleanface.purify.rules on its own, on small hand-made states."""

import numpy as np
import pytest

from cleanface.purify.calibration import MIN_ANGLES
from cleanface.purify.clock import StageClock
from cleanface.purify.codes import (
    DEDUP, DROP, KEEP, MERGE, NEW_IDENTITY, RELABEL, R_ANGLE, R_CLOSER, R_DUPLICATE, R_MERGED, R_NON_DOMINANT, R_NON_FINITE,
    R_NOISE_SCORE, R_NONE, R_OUTLIER_GROUP, R_SPLIT,
)
from cleanface.purify.naming import unique_name
from cleanface.purify.rules import (
    analyse,
    apply_advice,
    apply_angle_drop,
    apply_calibrated_drop,
    apply_dedup,
    apply_drop,
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
ANGLE_RULES = PurifySettings(merge_rule="angle", split_rule="angle")


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
    apply_merge(state, ANGLE_RULES)
    assert state.merge_to.tolist() == [0, 0, 2] and state.faiss["subcenters"] == "Flat"
    assert state.subcenter_index is not None and state.subcenter_identities.tolist() == [0, 1, 2]
    assert state.merges == [{"labels": [0, 1], "into": 0, "min_angle": pytest.approx(20, abs=1e-2), "max_angle": pytest.approx(20, abs=1e-2),
                             "merged": True}]
    assert state.action[6] == DROP and state.action[7:11].tolist() == [MERGE] * 4
    assert state.reason[7:11].tolist() == [R_MERGED] * 4 and state.new_label[7:11].tolist() == [0] * 4
    assert (state.action[:6] == KEEP).all() and (state.action[11:] == KEEP).all()


def test_merge_only_reported_when_switched_off():
    rows, labels, centers = merge_rows()
    state = state_of(rows, labels, centers, settings=PurifySettings(merge=False, merge_rule="angle"), upto=[apply_merge])
    assert len(state.merges) == 1 and state.merge_to.tolist() == [0, 1, 2] and (state.action == KEEP).all()


# -- split -------------------------------------------------------------------------------------------
def split_rows():
    rows = cluster(0, 5) + cluster(1, 4, start=2) + [toward(2, 20, 10)] + cluster(3, 5)
    return rows, [0] * 10 + [1] * 5, basis_centers(2)


def test_split_reports_and_on_request_makes_a_new_identity():
    rows, labels, centers = split_rows()
    state = state_of(rows, labels, centers, ["sam", "tom"], ANGLE_RULES, upto=[apply_angle_drop, apply_split])
    assert state.splits == [{"label": 0, "subcenters": [0, 1], "shares": [0.5, 0.4], "angle": pytest.approx(90, abs=1e-3), "applied": False}]
    assert state.out_names == ["sam", "tom"] and state.action[5:9].tolist() == [DROP] * 4
    state = state_of(rows, labels, centers, ["sam", "sam#2"], PurifySettings(split=True, split_rule="angle"), upto=[apply_angle_drop, apply_split])
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


# -- calibrated drop --------------------------------------------------------------------------------------------
WIDE = 64  # room for 31 well-separated identities and their spare sub-centers


def calibrated_rows(seed: int = 0, classes: int = 30, per: int = 8):
    """``classes`` identities of ``per`` images 15-35 degrees around orthonormal directions, then 4 images each labelled
    with one identity but lying around another's direction (rows ``classes*per`` on), then one lone image of an extra
    identity and one NaN row. Sub-center 0 of each identity is its direction; 1 and 2 are spare orthonormal axes."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(WIDE, WIDE)))
    dirs = q[:, : classes + 1].T

    def around(u, n):
        g = rng.normal(size=(n, WIDE))
        g -= (g @ u)[:, None] * u
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        t = np.radians(rng.uniform(15, 35, size=(n, 1)))
        return np.cos(t) * u + np.sin(t) * g

    rows = [around(dirs[c], per) for c in range(classes)]
    labels = list(np.repeat(np.arange(classes), per))
    mislabelled = [(3, 17), (9, 0), (21, 5), (28, 12)]  # (label, the identity whose direction the image lies around)
    rows += [around(dirs[true], 1) for _, true in mislabelled] + [around(dirs[classes], 1), np.full((1, WIDE), np.nan)]
    labels += [lab for lab, _ in mislabelled] + [classes, 0]
    spare = q[:, classes + 1 :]
    centers = np.stack([np.stack([dirs[c], spare[:, 2 * c % spare.shape[1]], spare[:, (2 * c + 1) % spare.shape[1]]])
                        for c in range(classes + 1)]).astype(np.float32)
    return np.vstack(rows).astype(np.float32), np.array(labels), centers


def test_calibrated_drop_finds_the_mislabelled_images():
    x, labels, centers = calibrated_rows()
    state = analyse(x, labels, centers)
    apply_calibrated_drop(state, DEFAULTS)
    planted, lone, bad = [240, 241, 242, 243], 244, 245
    assert np.flatnonzero(state.action == DROP).tolist() == planted + [bad]
    assert state.reason[planted].tolist() == [R_NOISE_SCORE] * 4 and state.reason[bad] == R_NON_FINITE
    assert (state.reason[:240] == R_NONE).all() and state.action[lone] == KEEP and state.reason[lone] == R_NONE
    cal = state.calibration
    assert cal["used"] is True and cal["angles"] == 244 and cal["impostors"] == 245 * 4 and cal["cut"] == 0.5
    assert cal["noise_rate"] == pytest.approx(4 / 244, abs=0.02) and cal["impostor_median"] == pytest.approx(90, abs=3)
    assert np.nanmax(state.loo_angle[:240]) < cal["threshold"] < np.min(state.loo_angle[planted])
    assert (state.noise_score[planted] > 0.5).all() and np.nanmax(state.noise_score[:240]) < 0.5
    assert np.isnan(state.loo_angle[[lone, bad]]).all() and np.isnan(state.noise_score[[lone, bad]]).all()
    assert np.isfinite(state.noise_score[:244]).all()
    assert (state.new_label == labels).all()  # the drop rule moves no image


def test_calibrated_drop_without_noise_drops_nothing_finite():
    x, labels, centers = calibrated_rows(seed=1)
    keep = np.r_[0:240, 244, 245]
    state = analyse(x[keep], labels[keep], centers)
    apply_drop(state, DEFAULTS)
    assert state.calibration["used"] is True and state.calibration["noise_rate"] < 0.02
    assert np.flatnonzero(state.action == DROP).tolist() == [241] and state.reason[241] == R_NON_FINITE


def test_calibrated_drop_with_drop_non_dominant():
    x, labels, centers = calibrated_rows()
    # identity 0's sub-center 1 moved 30 degrees from its direction, and image 0 put 20 degrees toward it: nearest
    # sub-center 1 (10 degrees), not the dominant 0, yet as close to the other images of identity 0 as a clean one
    spare = centers[0, 1].astype(np.float64)
    centers[0, 1] = np.cos(np.radians(30)) * centers[0, 0] + np.sin(np.radians(30)) * spare
    x[0] = np.cos(np.radians(20)) * centers[0, 0] + np.sin(np.radians(20)) * spare
    state = analyse(x, labels, centers)
    assert np.flatnonzero(state.not_dominant[:240]).tolist() == [0]  # (of the mislabelled ones, some are too)
    apply_calibrated_drop(state, PurifySettings(drop_non_dominant=True))
    assert state.loo_angle[0] < state.calibration["threshold"] and state.action[0] == DROP and state.reason[0] == R_NON_DOMINANT
    assert np.flatnonzero(state.action == DROP).tolist() == [0, 240, 241, 242, 243, 245]
    assert state.reason[240:244].tolist() == [R_NOISE_SCORE] * 4 and state.reason[245] == R_NON_FINITE
    plain = analyse(x, labels, centers)
    apply_calibrated_drop(plain, DEFAULTS)
    assert plain.action[0] == KEEP


def test_a_higher_noise_cut_raises_the_calibrated_threshold():
    x, labels, centers = calibrated_rows()
    low, high = analyse(x, labels, centers), analyse(x, labels, centers)
    apply_calibrated_drop(low, DEFAULTS)
    apply_calibrated_drop(high, PurifySettings(noise_cut=0.9))
    assert high.calibration["cut"] == 0.9 and high.calibration["threshold"] >= low.calibration["threshold"]
    np.testing.assert_array_equal(high.noise_score, low.noise_score)


def test_calibrated_drop_falls_back_to_the_angle_with_too_few_images():
    rows = cluster(0, 4) + [toward(0, 20, 80), np.full(D, np.nan)]  # 5 finite images, one 80 degrees off: fewer than MIN_ANGLES
    assert 5 < MIN_ANGLES
    state = state_of(rows, [0] * 6, basis_centers(1), upto=[apply_calibrated_drop])
    assert state.action.tolist() == [KEEP] * 4 + [DROP, DROP]
    assert state.reason.tolist() == [R_NONE] * 4 + [R_ANGLE, R_NON_FINITE]
    assert state.calibration["used"] is False
    assert f"fewer than {MIN_ANGLES}" in state.calibration["reason"] and "75 degrees" in state.calibration["reason"]
    assert np.isfinite(state.loo_angle[:5]).all() and np.isnan(state.loo_angle[5])  # measured, though not used
    assert np.isnan(state.noise_score).all()
    looser = state_of(rows, [0] * 6, basis_centers(1), settings=PurifySettings(threshold=85), upto=[apply_calibrated_drop])
    assert looser.action.tolist() == [KEEP] * 5 + [DROP] and "85 degrees" in looser.calibration["reason"]


def test_apply_drop_dispatches_on_the_drop_rule():
    x, labels, centers = calibrated_rows()
    angle = analyse(x, labels, centers)
    apply_drop(angle, PurifySettings(drop_rule="angle"))
    assert np.isnan(angle.loo_angle).all() and np.isnan(angle.noise_score).all() and angle.calibration == {}
    assert not (angle.reason == R_NOISE_SCORE).any() and angle.reason[245] == R_NON_FINITE
    assert (angle.reason[240:244] == R_ANGLE).all()  # near 90 degrees from their dominant sub-center
    calibrated = analyse(x, labels, centers)
    apply_drop(calibrated, DEFAULTS)
    assert calibrated.calibration["used"] is True and (calibrated.reason[240:244] == R_NOISE_SCORE).all()


def test_the_calibrated_rule_warns_when_most_images_look_like_impostors():
    from cleanface.purify.rules import HIGH_NOISE_RATE

    rows, labels, centers = calibrated_rows()
    calm = state_of(list(rows), labels, centers, upto=[apply_calibrated_drop])
    assert calm.calibration["used"] and "warning" not in calm.calibration
    shuffled = np.random.default_rng(4).permutation(labels[:240])  # every label scrambled: most images look wrong
    noisy = state_of(list(rows[:240]), shuffled, centers[:30], upto=[apply_calibrated_drop])
    assert noisy.calibration["used"] and noisy.calibration["noise_rate"] > HIGH_NOISE_RATE
    assert "look like impostors" in noisy.calibration["warning"]
