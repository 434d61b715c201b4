"""The one-pass 2-means against a plain round-by-round version, on hand-made identities."""

from __future__ import annotations

import numpy as np
import pytest

from cleanface.purify import shards
from cleanface.purify.identities import pooled_similarity, split_similarities
from cleanface.purify.two_means import filled_similarity, identity_spans, two_groups, two_means

DIM = 32


def crawl(identities: int = 60, per: int = 30, seed: int = 0, shuffle: bool = False):
    """Identities of two people each (a share of 0.3-0.7 from the second), as float16 unit rows."""
    rng = np.random.default_rng(seed)
    people = rng.normal(size=(identities, 2, DIM))
    labels = np.repeat(np.arange(identities), per)
    second = rng.random(len(labels)) < rng.uniform(0.3, 0.7, identities)[labels]
    x = people[labels, second.astype(int)] + rng.normal(size=(len(labels), DIM)) * 0.3
    if shuffle:
        order = rng.permutation(len(labels))
        labels, x, second = labels[order], x[order], second[order]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16), labels, second


def reference_two_means(x: np.ndarray, labels: np.ndarray, members: np.ndarray, rounds: int, tolerance: float) -> np.ndarray:
    """The rule written plainly: one identity's seeds, then rounds over all members at once until few change."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = labels.max() + 1
    centres = np.zeros((c, 2, x.shape[1]))
    for i in range(c):
        rows = np.flatnonzero((labels == i) & members)
        if not len(rows):
            continue
        mean = x[rows].sum(axis=0)
        seed1 = rows[np.argmin(x[rows] @ (mean / np.linalg.norm(mean)))]
        seed0 = rows[np.argmin(x[rows] @ x[seed1])]
        centres[i] = x[seed0], x[seed1]
    group = np.full(len(labels), -1)
    for _ in range(rounds):
        new = np.where(members, (np.einsum("nd,nd->n", x, centres[labels, 1]) > np.einsum("nd,nd->n", x, centres[labels, 0])).astype(int), -1)
        changed, group = int((new != group).sum()), new
        if changed <= members.sum() * tolerance:
            break
        for g in (0, 1):
            sums = np.zeros((c, x.shape[1]))
            np.add.at(sums, labels[group == g], x[group == g])
            norm = np.linalg.norm(sums, axis=1)
            centres[norm > 1e-6, g] = sums[norm > 1e-6] / norm[norm > 1e-6, None]
    return group


@pytest.mark.parametrize("shuffle", [False, True])
def test_groups_match_the_round_by_round_rule_and_find_the_two_people(shuffle):
    x, labels, second = crawl(shuffle=shuffle)
    members = np.ones(len(labels), bool)
    members[::17] = False
    got = two_means(x, labels, labels.max() + 1, members)
    want = reference_two_means(x, labels, members, 8, 0.001)
    np.testing.assert_array_equal(got.group, want)
    for i in range(labels.max() + 1):  # each group is one of the two people (group numbers are arbitrary)
        rows = (labels == i) & members
        agree = np.mean(got.group[rows] == second[rows])
        assert agree in (0.0, 1.0)
    assert (got.group[~members] == -1).all()


def test_similarity_sizes_and_sums_equal_the_separate_passes():
    x, labels, _ = crawl(seed=3)
    members = np.ones(len(labels), bool)
    c = labels.max() + 1
    got = two_means(x, labels, c, members)
    q, g0, g1 = split_similarities(x, labels, c, got.group)
    np.testing.assert_array_equal(filled_similarity(got), q)  # bit for bit: the same sums of the same rows in the same order
    np.testing.assert_array_equal(got.sizes, np.stack([g0.counts, g1.counts], axis=1))
    unit = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    np.testing.assert_allclose(got.member_sums, np.stack([unit[labels == i].sum(axis=0) for i in range(c)]), atol=1e-4)
    assert np.nanmax(filled_similarity(got)) < 0.9  # two people: a pair across is less alike than a pair inside
    assert np.allclose(pooled_similarity(g0.sums, g0.counts, g1.sums, g1.counts), got.similarity, equal_nan=True)


def test_blocks_of_any_size_give_the_same_groups():
    x, labels, _ = crawl(seed=5, shuffle=True)
    members = np.ones(len(labels), bool)
    whole = two_groups(x, labels, labels.max() + 1, members)
    with shards.using(shards.LocalRunner(max_block=97)):
        np.testing.assert_array_equal(two_groups(x, labels, labels.max() + 1, members), whole)


def test_the_stop_is_global_and_counted():
    x, labels, _ = crawl(seed=7)
    members = np.ones(len(labels), bool)
    c = labels.max() + 1
    assert two_means(x, labels, c, members, tolerance=1.0).rounds == 1  # everyone changes in round 1: stop at once
    full = two_means(x, labels, c, members, tolerance=0.0, iterations=20)
    np.testing.assert_array_equal(full.group, reference_two_means(x, labels, members, 20, 0.0))
    assert full.rounds < 20  # converged: a round in which nobody moved


def test_a_lone_member_and_an_identity_without_members():
    x, labels, _ = crawl(identities=3, per=5)
    members = np.ones(len(labels), bool)
    members[labels == 1] = False
    members[np.flatnonzero(labels == 2)[1:]] = False
    got = two_means(x, labels, 3, members)
    assert (got.group[labels == 1] == -1).all() and (got.sizes[1] == 0).all() and np.isnan(got.similarity[1])
    assert got.sizes[2].sum() == 1 and np.isnan(got.similarity[2])
    assert (two_means(x, labels, 3, np.zeros(len(labels), bool)).group == -1).all()  # no members: all -1


def test_identity_spans_end_with_an_identity():
    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3, 4, 4])
    spans = identity_spans(labels, 4)
    assert spans[0][0] == 0 and spans[-1][1] == len(labels)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for lo, hi in spans:
        assert hi == len(labels) or labels[hi - 1] != labels[hi]
    assert (4, 10) in spans  # identity 2 (6 rows) is longer than a span: alone in its own
    assert identity_spans(labels[:0], 4) == []
