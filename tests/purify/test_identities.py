"""Identity-level signals on hand-made embeddings whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from cleanface.purify.decisions import decide
from cleanface.purify.identities import (
    calibrate_merges, calibrate_splits, group_sums, half_similarities, member_and_half_sums, nearest_identities, pooled_similarity,
    random_halves, random_pair_similarities, split_similarities,
)
from cleanface.purify.two_means import two_groups
from cleanface.purify.settings import PurifySettings
from tests.purify.conftest import axis, toward

DIM = 64


def people(count: int, seed: int = 0) -> np.ndarray:
    """``count`` random unit directions in DIM dimensions (nearly orthogonal: different people)."""
    v = np.random.default_rng(seed).normal(size=(count, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def photos(centre: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.9) -> np.ndarray:
    """``n`` unit embeddings around ``centre``: centre plus isotropic noise of norm about ``spread``."""
    x = centre + rng.normal(size=(n, DIM)) * spread / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def crawl(seed: int = 0):
    """40 identities x 10 photos, with: ``p00`` also under the name ``p00-again`` (to merge), ``p01`` holding two people
    (to split), and ``p02`` / ``p03`` two distinct people 35 degrees apart (not to merge)."""
    rng = np.random.default_rng(seed)
    centres = people(44, seed)
    centres[3] = np.cos(np.radians(35)) * centres[2] + np.sin(np.radians(35)) * centres[43]  # close, yet someone else
    centres[3] /= np.linalg.norm(centres[3])
    rows, labels, names = [], [], []
    for c in range(40):
        names.append(f"p{c:02d}")
        if c == 1:  # two people under one name
            block = np.vstack([photos(centres[1], 6, rng), photos(centres[41], 6, rng)])
        else:
            block = photos(centres[c], 10, rng)
        rows.append(block)
        labels += [c] * len(block)
    names.append("p00-again")  # the same person as p00, crawled under another name
    rows.append(photos(centres[0], 10, rng))
    labels += [40] * 10
    return np.vstack(rows).astype(np.float32), np.array(labels), names


def test_pooled_similarity_is_one_for_the_same_person_and_lower_for_two():
    a = np.array([axis(0), axis(0), toward(0, 1, 20)])
    b = np.array([axis(0), toward(0, 2, 20)])
    c = np.array([axis(5), axis(5)])
    sa, sb, sc = a.sum(0), b.sum(0), c.sum(0)
    same = pooled_similarity(sa[None], np.array([3]), sb[None], np.array([2]))[0]
    assert same == pytest.approx(1.0, abs=0.08)
    assert pooled_similarity(sa[None], np.array([3]), sc[None], np.array([2]))[0] == pytest.approx(0.0, abs=1e-9)
    # no pair within either group, or an empty group: undefined
    assert np.isnan(pooled_similarity(axis(0)[None], np.array([1]), axis(1)[None], np.array([1]))).all()
    assert np.isnan(pooled_similarity(sa[None], np.array([3]), np.zeros((1, sa.size)), np.array([0]))).all()


def test_random_halves_alternate_within_each_identity_and_skip_non_members():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    members = np.array([True] * 7 + [False])
    half = random_halves(labels, members, seed=3)
    assert half[7] == -1
    assert sorted(half[:4].tolist()) == [0, 0, 1, 1] and sorted(half[4:7].tolist()) in ([0, 0, 1], [0, 1, 1])
    assert (random_halves(labels, members, seed=3) == half).all()


def test_nearest_identity_finds_the_same_person_under_another_name():
    emb, labels, names = crawl()
    sums = group_sums(emb, labels, len(names))
    nearest, q = nearest_identities(sums)
    assert nearest[0] == 40 and nearest[40] == 0 and q[0] == pytest.approx(1.0, abs=0.1)
    assert nearest[2] == 3 and q[2] == pytest.approx(np.cos(np.radians(35)), abs=0.05)  # close people: similar, not the same
    assert np.nanmax(np.delete(q, [0, 2, 3, 40])) < 0.6


def test_calibrated_merge_scores_the_same_person_high_and_the_close_pair_low():
    emb, labels, names = crawl()
    members = np.ones(len(labels), bool)
    sums = group_sums(emb, labels, len(names), members)
    nearest, q = nearest_identities(sums)
    halves = half_similarities(emb, labels, len(names), members)
    cal, score = calibrate_merges(q, halves)
    assert cal is not None and score[0] > 0.9 and score[40] > 0.9
    assert score[2] < 0.5 and score[3] < 0.5
    assert np.nanmax(np.delete(score, [0, 40])) < 0.5


def test_two_groups_separate_two_people_and_calibrated_split_flags_them():
    emb, labels, names = crawl()
    members = np.ones(len(labels), bool)
    group = two_groups(emb, labels, len(names), members)
    mixed = group[labels == 1]
    assert len(set(mixed[:6])) == 1 and len(set(mixed[6:])) == 1 and mixed[0] != mixed[6]
    q, g0, g1 = split_similarities(emb, labels, len(names), group)
    reference = random_pair_similarities(group_sums(emb, labels, len(names), members))
    cal, score = calibrate_splits(q, reference)
    assert cal is not None and score[1] > 0.9
    assert np.nanmax(np.delete(score, 1)) < 0.5


def test_split_needs_two_well_filled_groups():
    emb, labels, names = crawl()
    group = np.where(labels == 5, 0, -1)
    group[np.flatnonzero(labels == 5)[:2]] = 1  # two images of ten: outliers, not a second person
    q, g0, g1 = split_similarities(emb, labels, len(names), group)
    assert np.isnan(q[5]) and g1.counts[5] == 2


def test_decide_merges_and_reports_the_split_by_default():
    emb, labels, names = crawl()
    centers = group_sums(emb, labels, len(names)).sums[:, None, :]
    d = decide(emb, labels, centers, names=names)
    assert [m["identities"] for m in d.merges] == [["p00", "p00-again"]]
    assert d.merges[0]["merged"] is True and d.merges[0]["score"] >= 0.9 and d.merges[0]["into"] in ("p00", "p00-again")
    assert d.action_counts()["merge"] >= 9
    assert [s["identity"] for s in d.splits] == ["p01"] and d.splits[0]["applied"] is False
    assert sorted(d.splits[0]["sizes"]) == [6, 6] and d.splits[0]["score"] > 0.9
    assert d.identity_calibration["merge"]["used"] and d.identity_calibration["split"]["used"]
    applied = decide(emb, labels, centers, PurifySettings(split=True), names=names)
    moved = np.flatnonzero(applied.action == 5)  # new-identity
    assert len(moved) == 6 and set(labels[moved]) == {1} and applied.names[-1] == "p01#2"
    unmerged = decide(emb, labels, centers, PurifySettings(merge=False), names=names)
    assert unmerged.merges[0]["merged"] is False and unmerged.action_counts()["merge"] == 0


def test_the_close_pair_is_not_merged_even_when_asked_to_merge_eagerly():
    emb, labels, names = crawl()
    centers = group_sums(emb, labels, len(names)).sums[:, None, :]
    d = decide(emb, labels, centers, PurifySettings(merge_cut=0.05, merge_auto_cut=0.05), names=names)
    assert not any({"p02", "p03"} <= set(m["identities"]) for m in d.merges)


def test_group_sums_leave_out_non_finite_rows_unless_told_the_members():
    emb, labels, names = crawl()
    emb[0] = np.nan
    found = group_sums(emb, labels, len(names))
    assert found.counts[0] == 9 and np.isfinite(found.sums).all()
    assert group_sums(emb, labels, len(names), labels != 0).counts[0] == 0


def test_a_model_trained_on_the_labels_proposes_merges_but_never_merges():
    emb, labels, names = crawl()
    centers = group_sums(emb, labels, len(names)).sums[:, None, :]
    d = decide(emb, labels, centers, names=names, labels_learned=True)
    assert [m["identities"] for m in d.merges] == [["p00", "p00-again"]] and d.merges[0]["merged"] is False
    assert d.action_counts()["merge"] == 0 and d.identity_calibration["merge"]["auto_merge"] is False
    assert "trained on these labels" in d.identity_calibration["merge"]["auto_merge_reason"]
    assert decide(emb, labels, centers, names=names).identity_calibration["merge"]["auto_merge"] is True


def test_members_and_halves_summed_in_one_pass_equal_three_passes():
    rng = np.random.default_rng(8)
    labels = np.sort(rng.integers(0, 400, 150_000))  # more rows than one block of the sums
    x = rng.normal(size=(len(labels), 16)).astype(np.float16)
    members = rng.random(len(labels)) < 0.8
    whole, a, b = member_and_half_sums(x, labels, 400, members, seed=3)
    half = random_halves(labels, members, 3)
    for got, rows in ((whole, members), (a, half == 0), (b, half == 1)):
        want = group_sums(x, labels, 400, rows)
        np.testing.assert_array_equal(got.sums, want.sums)  # bit for bit: the same blocks, summed in the same order
        np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(half_similarities(x, labels, 400, members, seed=3),
                                  np.where((a.counts >= 3) & (b.counts >= 3), pooled_similarity(a.sums, a.counts, b.sums, b.counts), np.nan))
