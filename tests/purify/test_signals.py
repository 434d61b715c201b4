"""cleanface.purify.signals on hand-made embeddings whose angles are known."""

import numpy as np
import pytest

from cleanface.purify.signals import identity_sums, impostor_angles, loo_mean_angle

R2 = np.sqrt(0.5)
# a, b, c of one identity: the others of a (b + c) point at atan(1 + sqrt 2) = 67.5 degrees from it, likewise for b; the
# others of c (a + b) point along c exactly.
A, B, C = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [R2, R2, 0.0]


def loo(rows, labels, num_classes=None, weights=None, **kw):
    x = np.asarray(rows, dtype=np.float32)
    labels = np.asarray(labels)
    return loo_mean_angle(x, labels, int(labels.max()) + 1 if num_classes is None else num_classes, weights, **kw)


def random_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- identity_sums ---------------------------------------------------------------------------------
def test_identity_sums_add_unit_rows_times_weights_and_skip_non_finite_rows():
    rows = np.array([[3, 0, 0], [0, 0.5, 0], [np.nan, 1, 0], [0, 0, 2], [0, np.inf, 0]], dtype=np.float32)
    sums = identity_sums(rows, np.array([0, 0, 0, 2, 2]), 3)
    assert sums.dtype == np.float32 and sums.shape == (3, 3)
    np.testing.assert_allclose(sums, [[1, 1, 0], [0, 0, 0], [0, 0, 1]], atol=1e-7)
    weighted = identity_sums(rows, np.array([0, 0, 0, 2, 2]), 3, np.array([0.5, 2, 7, 3, 9]))
    np.testing.assert_allclose(weighted, [[0.5, 2, 0], [0, 0, 0], [0, 0, 3]], atol=1e-7)


# -- loo_mean_angle: exact angles ------------------------------------------------------------------
def test_loo_angles_of_three_known_vectors():
    angle, sums = loo([A, B, C], [0, 0, 0])
    assert angle.dtype == np.float32 and angle.shape == (3,)
    np.testing.assert_allclose(angle, [67.5, 67.5, 0.0], atol=1e-3)
    np.testing.assert_allclose(sums, [[1 + R2, 1 + R2, 0]], atol=1e-6)


def test_loo_angles_of_two_images_are_the_angle_between_them_and_identities_do_not_mix():
    angle, _ = loo([A, B, C, [0, 0, 1], [0, R2, R2]], [0, 0, 0, 1, 1])
    np.testing.assert_allclose(angle, [67.5, 67.5, 0.0, 45.0, 45.0], atol=1e-3)


def test_loo_angle_is_nan_for_a_lone_image_and_for_an_identity_without_images():
    angle, sums = loo([A, B, C, [0, 0, 1]], [0, 0, 0, 2], num_classes=4)
    np.testing.assert_allclose(angle[:3], [67.5, 67.5, 0.0], atol=1e-3)
    assert np.isnan(angle[3])
    assert not sums[1].any() and not sums[3].any()


def test_loo_angle_is_nan_when_the_others_cancel_out():
    """Others b and -b sum to zero: a has no mean to be judged against; b and -b each lie 135 degrees from the rest."""
    angle, _ = loo([A, B, [0, -1, 0]], [0, 0, 0])
    assert np.isnan(angle[0])
    np.testing.assert_allclose(angle[1:], [135.0, 135.0], atol=1e-3)


def test_non_finite_rows_get_nan_and_do_not_poison_the_others():
    rows = [A, [np.nan, 0, 0], B, [0, np.inf, 0], C, [-np.inf, 1, 0]]
    angle, sums = loo(rows, [0, 0, 0, 0, 0, 1])
    assert np.isnan(angle[[1, 3, 5]]).all()
    np.testing.assert_allclose(angle[[0, 2, 4]], [67.5, 67.5, 0.0], atol=1e-3)
    assert np.isfinite(sums).all() and not sums[1].any()
    np.testing.assert_allclose(sums[0], [1 + R2, 1 + R2, 0], atol=1e-6)


def test_a_non_finite_row_beside_a_lone_image_leaves_it_lone():
    angle, _ = loo([A, [np.nan] * 3, B, C], [0, 0, 1, 1])
    assert np.isnan(angle[:2]).all()
    np.testing.assert_allclose(angle[2:], [45.0, 45.0], atol=1e-3)


def test_scale_of_the_embeddings_does_not_matter():
    rng = np.random.default_rng(0)
    x = random_rows(rng, 40, 8)
    labels = rng.integers(0, 5, size=40)
    scaled = x * rng.uniform(0.01, 50, size=(40, 1))
    np.testing.assert_allclose(loo(scaled, labels)[0], loo(x, labels)[0], atol=1e-3)
    np.testing.assert_allclose(loo([np.multiply(A, 3), np.multiply(B, 0.5), np.multiply(C, 7)], [0, 0, 0])[0], [67.5, 67.5, 0], atol=1e-3)


# -- weights ----------------------------------------------------------------------------------------
def test_an_image_of_weight_zero_is_scored_but_not_counted():
    rows = [A, B, C, A]  # the second A has weight 0: it would pull the others' means were it counted
    angle, sums = loo(rows, [0, 0, 0, 0], weights=np.array([1, 1, 1, 0]))
    np.testing.assert_allclose(angle[:3], [67.5, 67.5, 0.0], atol=1e-3)
    assert angle[3] == pytest.approx(45.0, abs=1e-3)  # scored against a + b + c, which points along (1, 1, 0)
    np.testing.assert_allclose(sums[0], [1 + R2, 1 + R2, 0], atol=1e-6)
    counted, _ = loo(rows, [0, 0, 0, 0])
    assert counted[2] > 1.0  # counted, the second A would tilt c's mean away from c


def test_fractional_weights_weigh_the_means():
    angle, _ = loo([A, B, C], [0, 0, 0], weights=np.array([1.0, 0.5, 1.0]))
    # a against 0.5 b + c = (R2, 0.5 + R2); b against a + c as before (its own weight plays no part); c against a + 0.5 b = (1, 0.5)
    expected = [np.degrees(np.arctan2(0.5 + R2, R2)), 67.5, 45 - np.degrees(np.arctan2(0.5, 1))]
    np.testing.assert_allclose(angle, expected, atol=1e-3)


def test_with_weight_zero_on_all_others_an_image_is_lone():
    angle, _ = loo([A, B, C], [0, 0, 0], weights=np.array([1.0, 0.0, 0.0]))
    assert np.isnan(angle[0])  # its own weight is taken out again: nothing left
    np.testing.assert_allclose(angle[1:], [90.0, 45.0], atol=1e-3)  # b and c are still scored against a


# -- chunks and dtypes --------------------------------------------------------------------------------
def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(1)
    x = random_rows(rng, 23, 6).astype(np.float32)
    x[[4, 17]] = np.nan
    labels = rng.integers(0, 4, size=23)
    weights = rng.uniform(0, 2, size=23)
    whole, sums = loo_mean_angle(x, labels, 5, weights)
    for chunk in (1, 2, 5):
        part, part_sums = loo_mean_angle(x, labels, 5, weights, chunk=chunk)
        np.testing.assert_allclose(part, whole, atol=1e-4)
        np.testing.assert_allclose(part_sums, sums, atol=1e-5)
        assert np.array_equal(np.isnan(part), np.isnan(whole))
    assert np.isnan(whole[[4, 17]]).all() and np.isfinite(np.delete(whole, [4, 17])).all()


def test_a_float16_memmap_works(tmp_path):
    rng = np.random.default_rng(2)
    x = random_rows(rng, 30, 16) * 3
    labels = rng.integers(0, 3, size=30)
    path = tmp_path / "emb.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(path, dtype=np.float16, mode="r", shape=x.shape)
    angle, sums = loo_mean_angle(ro, labels, 3, chunk=7)
    reference, _ = loo_mean_angle(x.astype(np.float32), labels, 3)
    assert angle.dtype == np.float32 and sums.dtype == np.float32
    np.testing.assert_allclose(angle, reference, atol=0.1)
    assert impostor_angles(ro, labels, sums, per_image=2).shape == (60,)


# -- impostor_angles ------------------------------------------------------------------------------------
def axes_dataset(num_classes=5, per_class=6, d=8):
    """Every image of identity c lies on axis c: 0 degrees to its own mean, 90 to any other."""
    labels = np.repeat(np.arange(num_classes), per_class)
    x = np.eye(d, dtype=np.float32)[labels] * 2
    return x, labels, identity_sums(x, labels, num_classes)


def test_impostors_never_pair_an_image_with_its_own_identity():
    x, labels, sums = axes_dataset()
    for seed in range(5):
        out = impostor_angles(x, labels, sums, per_image=8, seed=seed)
        assert out.dtype == np.float32 and out.shape == (30 * 8,)
        np.testing.assert_allclose(out, 90.0, atol=1e-4)


def test_impostors_with_two_identities_always_take_the_other():
    x, labels, sums = axes_dataset(num_classes=2, per_class=3)
    np.testing.assert_allclose(impostor_angles(x, labels, sums, per_image=16), 90.0, atol=1e-4)


def test_impostors_never_draw_an_identity_without_a_mean():
    x, labels, _ = axes_dataset(num_classes=4)
    sums = identity_sums(x, labels, 6)  # identities 4 and 5 have no image: zero sums
    sums[2] = 0  # and identity 2 has none either, as if all its images were dropped
    out = impostor_angles(x, labels, sums, per_image=8)
    assert out.shape == (24 * 8,) and np.isfinite(out).all()
    np.testing.assert_allclose(out, 90.0, atol=1e-4)


def test_impostors_need_two_identities_with_a_mean():
    x, labels, sums = axes_dataset(num_classes=3)
    one = sums.copy()
    one[1:] = 0
    for s in (np.zeros_like(sums), one):
        out = impostor_angles(x, labels, s)
        assert out.shape == (0,) and out.dtype == np.float32
    assert impostor_angles(x[:0], labels[:0], sums).shape == (0,)


def test_impostors_measure_the_angle_to_the_other_mean():
    """Identity 1's images lie 30 degrees from identity 0's axis: each image of 1 is 30 degrees from the mean of 0."""
    t = np.radians(30)
    rows = np.array([A, A, [np.cos(t), np.sin(t), 0], [np.cos(t), np.sin(t), 0], [np.cos(t), np.sin(t), 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    _, sums = loo_mean_angle(rows, labels, 2)
    np.testing.assert_allclose(impostor_angles(rows, labels, sums, per_image=3), 30.0, atol=1e-3)


def test_impostors_are_seeded_and_sample_at_most_sample_images():
    rng = np.random.default_rng(3)
    x = random_rows(rng, 60, 5).astype(np.float32)
    labels = rng.integers(0, 6, size=60)
    sums = identity_sums(x, labels, 6)
    first = impostor_angles(x, labels, sums, seed=7)
    assert np.array_equal(first, impostor_angles(x, labels, sums, seed=7))
    assert not np.array_equal(first, impostor_angles(x, labels, sums, seed=8))
    assert first.shape == (60 * 4,)
    assert impostor_angles(x, labels, sums, sample=10, per_image=3).shape == (30,)
    assert ((first >= 0) & (first <= 180)).all()


def test_impostors_skip_non_finite_rows():
    x, labels, sums = axes_dataset()
    x[[0, 7, 29]] = np.nan
    out = impostor_angles(x, labels, sums, per_image=2)
    assert out.shape == (27 * 2,)
    np.testing.assert_allclose(out, 90.0, atol=1e-4)
