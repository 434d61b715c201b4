"""Verification metrics against hand-made cases and brute-force reference computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanface.errors import ConfigError, DataError
from cleanface.eval.verification import ROC_POINTS, auc, best_threshold, kfold_accuracy, roc_curve, tar_at_far, verify


@st.composite
def scored_pairs(draw, min_size=2, max_size=30, both=True):
    """Scores on a coarse grid (so ties happen) and flags, with both classes when ``both``."""
    n = draw(st.integers(min_size, max_size))
    scores = np.array(draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n)), dtype=np.float64) / 4
    same = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if both:
        same[0], same[-1] = True, False
    return scores, same


# -- brute-force references -----------------------------------------------------------------
def _ref_best(s, y):
    """Accuracy of every candidate threshold by a loop; the documented tie rule (lower median)."""
    u = sorted(set(s.tolist()))
    cands = [np.nextafter(u[0], -np.inf)] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1]]
    correct = [sum((si > t) == yi for si, yi in zip(s, y)) for t in cands]
    best = [t for t, c in zip(cands, correct) if c == max(correct)]
    return best[(len(best) - 1) // 2]


def _ref_kfold(s, y, folds):
    n = len(s)
    fold = [k * folds // n for k in range(n)]
    accs, ts = [], []
    for f in range(folds):
        train = [k for k in range(n) if fold[k] != f]
        test = [k for k in range(n) if fold[k] == f]
        t = _ref_best(s[train], y[train])
        accs.append(np.mean([(s[k] > t) == y[k] for k in test]))
        ts.append(t)
    return np.mean(accs), np.std(accs), np.mean(ts)


def _ref_rates(s, y, t):
    pos, neg = s[y], s[~y]
    tar = np.mean(pos >= t) if len(pos) else 0.0
    far = np.mean(neg >= t) if len(neg) else 0.0
    return far, tar


# -- k-fold accuracy ------------------------------------------------------------------------
def test_separable_scores_give_full_accuracy_and_a_threshold_between_classes():
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.6, 0.9, 300), rng.uniform(-0.2, 0.4, 300)
    scores = np.r_[pos, neg]
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    order = rng.permutation(600)
    mean, std, threshold = kfold_accuracy(scores[order], same[order])
    assert mean == 1.0 and std == 0.0
    assert neg.max() < threshold < pos.min()


def test_random_scores_give_chance_accuracy():
    rng = np.random.default_rng(1)
    mean, std, _ = kfold_accuracy(rng.uniform(-1, 1, 6000), rng.random(6000) < 0.5)
    assert 0.46 < mean < 0.54
    assert std > 0


def test_threshold_is_chosen_without_the_held_out_fold():
    # Fold 0 separates at 0.75, fold 1 at 0.25: each fold's own best threshold is wrong
    # for the other, so only a leaking implementation reaches more than chance.
    scores = np.r_[[0.9] * 5, [0.6] * 5, [0.4] * 5, [0.1] * 5]
    same = np.r_[[True] * 5, [False] * 5, [True] * 5, [False] * 5]
    mean, std, threshold = kfold_accuracy(scores, same, folds=2)
    assert mean == 0.5 and std == 0.0
    assert threshold == pytest.approx((0.75 + 0.25) / 2)
    # The same folds given explicitly, interleaved, give the same answer.
    fold = np.r_[[0] * 10, [1] * 10]
    perm = np.random.default_rng(2).permutation(20)
    assert kfold_accuracy(scores[perm], same[perm], fold=fold[perm])[0] == 0.5


@settings(max_examples=60, deadline=None)
@given(scored_pairs(min_size=4), st.integers(2, 4))
def test_kfold_matches_brute_force_reference(pairs, folds):
    s, y = pairs
    got = kfold_accuracy(s, y, folds=folds)
    want = _ref_kfold(s, y, folds)
    assert got == pytest.approx(want, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(scored_pairs(min_size=1, both=False))
def test_best_threshold_is_optimal(pairs):
    s, y = pairs
    t = best_threshold(s, y)
    grid = np.r_[s - 1e-9, s + 1e-9, -np.inf]
    best = max(np.mean((s > g) == y) for g in grid)
    assert np.mean((s > t) == y) == best


# -- ROC, AUC, TAR@FAR ----------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(scored_pairs(min_size=1, both=False))
def test_roc_matches_brute_force(pairs):
    s, y = pairs
    far, tar, thresholds = roc_curve(s, y)
    assert thresholds[0] == np.inf and (np.diff(thresholds) < 0).all()
    assert np.array_equal(thresholds[1:], np.unique(s)[::-1])
    assert far[0] == 0 and tar[0] == 0
    for f, t, th in zip(far[1:], tar[1:], thresholds[1:]):
        assert (f, t) == pytest.approx(_ref_rates(s, y, th))
    if y.any() and not y.all():
        assert far[-1] == 1 and tar[-1] == 1


@settings(max_examples=80, deadline=None)
@given(scored_pairs())
def test_auc_equals_the_mann_whitney_statistic(pairs):
    s, y = pairs
    pos, neg = s[y], s[~y]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    assert auc(*roc_curve(s, y)[:2]) == pytest.approx(wins / (len(pos) * len(neg)))


@settings(max_examples=80, deadline=None)
@given(scored_pairs(), st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_tar_at_far_matches_brute_force_and_is_monotonic(pairs, targets):
    s, y = pairs
    targets = sorted(targets)
    got = [tar_at_far(s, y, t) for t in targets]
    assert all(a <= b for a, b in zip(got, got[1:]))
    for target, value in zip(targets, got):
        rates = [_ref_rates(s, y, th) for th in np.r_[np.inf, s]]
        assert value == pytest.approx(max(t for f, t in rates if f <= target))


def test_tar_at_far_is_zero_without_negatives_and_one_when_separable():
    assert tar_at_far([0.1, 0.5, 0.9], [True, True, True], 1e-3) == 0.0
    assert tar_at_far([0.9, 0.8, 0.1, 0.2], [True, True, False, False], 0.0) == 1.0
    assert tar_at_far([0.9, 0.1, 0.8, 0.95], [True, True, False, False], 0.0) == 0.0


# -- verify ---------------------------------------------------------------------------------
def test_verify_returns_the_eval_json_shape():
    rng = np.random.default_rng(3)
    same = rng.random(5000) < 0.5
    scores = np.where(same, rng.normal(0.6, 0.15, 5000), rng.normal(0.1, 0.15, 5000))
    out = verify(scores, same)
    assert set(out) == {"num_pairs", "accuracy", "accuracy_std", "threshold", "tar_at_far", "auc", "roc"}
    assert out["num_pairs"] == 5000
    assert 0.9 < out["accuracy"] <= 1 and 0 <= out["accuracy_std"] < 0.05
    assert 0.1 < out["threshold"] < 0.6
    assert set(out["tar_at_far"]) == {"1e-2", "1e-3"}
    assert 0 <= out["tar_at_far"]["1e-3"] <= out["tar_at_far"]["1e-2"] <= 1
    assert 0.95 < out["auc"] <= 1
    far, tar = out["roc"]["far"], out["roc"]["tar"]
    assert len(far) == len(tar) <= ROC_POINTS
    full_far, full_tar, _ = roc_curve(scores, same)
    assert (far[0], tar[0], far[-1], tar[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert all(a <= b for a, b in zip(far, far[1:])) and all(a <= b for a, b in zip(tar, tar[1:]))
    assert set(zip(far, tar)) <= set(zip(full_far.tolist(), full_tar.tolist()))
    assert json.loads(json.dumps(out)) == out


def test_verify_keeps_small_roc_whole():
    out = verify([0.9, 0.8, 0.3, 0.2], [True, False, True, False], folds=2)
    assert out["roc"]["far"] == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert out["roc"]["tar"] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert out["auc"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "scores, same, message",
    [
        ([0.1, 0.2], [True], "differ in length"),
        ([], [], "empty"),
        ([0.1, np.nan, 0.3, 0.4], [True, False, True, False], "NaN"),
        ([0.1, 0.2, 0.3], [True, True, True], "all 3 pairs are matched"),
        ([0.1, 0.2, 0.3], [False, False, False], "mismatched"),
        ([0.1, 0.2, 0.3], [True, False, True], "only 3 pairs for 10 folds"),
        ([0.1, 0.2, 0.3], ["a", "b", "c"], "booleans"),
    ],
)
def test_verify_refuses_bad_input(scores, same, message):
    with pytest.raises(DataError, match=message):
        verify(scores, same)


def test_bad_folds_are_refused():
    s, y = [0.1, 0.2, 0.3, 0.4], [True, False, True, False]
    with pytest.raises(ConfigError, match="folds"):
        kfold_accuracy(s, y, folds=1)
    with pytest.raises(DataError, match="one fold"):
        kfold_accuracy(s, y, fold=[0, 0, 0, 0])
    with pytest.raises(DataError, match="one entry per pair"):
        kfold_accuracy(s, y, fold=[0, 1])
    with pytest.raises(ConfigError, match="far_target"):
        tar_at_far(s, y, 2.0)
