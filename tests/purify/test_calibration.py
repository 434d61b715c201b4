"""cleanface.purify.calibration on synthetic angles whose clean / noise split is planted."""

import numpy as np
import pytest

from cleanface.purify.calibration import (
    GRID_STEP,
    MIN_ANGLES,
    Calibration,
    _grid,
    calibrate,
    fit_impostor_mixture,
    impostor_density,
    score_curve,
)

CLEAN, NOISE = 800, 200


def impostor_sample(rng, n, kind):
    """What a wrong label looks like: N(85, 8) or a broad uniform-ish bump over 60..120 degrees."""
    if kind == "normal":
        return rng.normal(85, 8, n)
    return rng.uniform(60, 120, n) + rng.normal(0, 2, n)


def planted(seed=0, kind="normal", noise=NOISE, scale=1.0):
    """(angles, truth, impostors): CLEAN angles from N(40, 6), ``noise`` from the impostor distribution; all times ``scale``."""
    rng = np.random.default_rng(seed)
    angles = np.concatenate([rng.normal(40, 6, CLEAN), impostor_sample(rng, noise, kind)])
    truth = np.r_[np.zeros(CLEAN, bool), np.ones(noise, bool)]
    return angles * scale, truth, impostor_sample(rng, 4000, kind) * scale


def f1(pred, truth):
    tp = (pred & truth).sum()
    return 2 * tp / (pred.sum() + truth.sum())


# -- the fit -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "uniform"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrate_recovers_the_planted_noise(kind, seed):
    angles, truth, impostors = planted(seed, kind)
    cal, scores = calibrate(angles, impostors)
    assert isinstance(cal, Calibration)
    assert cal.noise_rate == pytest.approx(NOISE / (CLEAN + NOISE), abs=0.05)
    assert cal.clean_mean == pytest.approx(40, abs=2) and cal.clean_std == pytest.approx(6, abs=1.5)
    assert 40 + 6 < cal.threshold < np.median(impostors)
    assert f1(angles > cal.threshold, truth) >= 0.9
    assert f1(scores >= 0.5, truth) >= 0.9
    assert cal.angles == CLEAN + NOISE and cal.impostors == 4000 and cal.cut == 0.5 and 1 <= cal.iterations <= 500
    assert cal.impostor_median == pytest.approx(np.median(impostors))


def test_without_noise_the_rate_is_small_and_few_are_dropped():
    angles, _, impostors = planted(noise=0)
    cal, scores = calibrate(angles, impostors)
    assert cal.noise_rate < 0.01
    dropped = angles > (180 if cal.threshold is None else cal.threshold)
    assert dropped.sum() <= 0.01 * len(angles)
    assert (scores < 0.5).mean() >= 0.99


def test_a_narrow_cone_still_gets_a_threshold_between_the_modes():
    """The same data with every angle times 0.25 (an embedder whose faces all lie in a narrow cone)."""
    angles, truth, impostors = planted(scale=0.25)
    cal, _ = calibrate(angles, impostors)
    assert cal.clean_mean == pytest.approx(10, abs=0.5)
    assert cal.noise_rate == pytest.approx(0.2, abs=0.05)
    assert 10 + 1.5 < cal.threshold < 85 * 0.25
    assert f1(angles > cal.threshold, truth) >= 0.9
    wide, _ = calibrate(*planted()[::2])
    assert cal.threshold < wide.threshold  # the threshold follows the data, it is no fixed angle


def test_the_threshold_lies_where_the_clean_and_noise_bumps_move():
    near, _ = calibrate(*planted()[::2])
    angles, _, impostors = planted()
    far, _ = calibrate(angles + np.r_[np.zeros(CLEAN), np.full(NOISE, 30.0)], impostors + 30)
    assert far.threshold > near.threshold


# -- the scores ----------------------------------------------------------------------------------------
def test_scores_are_probabilities_non_decreasing_above_the_clean_mean():
    angles, _, impostors = planted()
    cal, scores = calibrate(angles, impostors)
    assert scores.dtype == np.float32 and scores.shape == angles.shape
    assert ((scores >= 0) & (scores <= 1)).all()
    order = np.argsort(angles)
    above = order[angles[order] >= cal.clean_mean]
    assert (np.diff(scores[above].astype(np.float64)) >= -1e-6).all()
    below = angles < cal.clean_mean
    at_mean = np.interp(cal.clean_mean, np.sort(angles), np.sort(scores))
    assert (scores[below] <= at_mean + 1e-6).all()  # below the mean the score is capped at the mean's
    assert scores[angles > cal.threshold].min() >= cal.cut
    assert scores[angles < cal.threshold - GRID_STEP].max() < cal.cut


def test_score_curve_is_the_posterior_made_monotone():
    density = impostor_density(np.random.default_rng(0).normal(85, 8, 4000))
    curve = score_curve(0.2, 40.0, 6.0, density)
    grid = _grid()
    assert curve.shape == grid.shape and ((curve >= 0) & (curve <= 1)).all()
    start = int(np.searchsorted(grid, 40.0))
    assert (np.diff(curve[start:]) >= 0).all() and (curve[:start] <= curve[start]).all()
    noisy = 0.2 * density
    post = noisy / (noisy + 0.8 * np.exp(-0.5 * ((grid - 40) / 6) ** 2) / (6 * np.sqrt(2 * np.pi)))
    i = int(np.searchsorted(grid, 85.0))
    assert curve[i] == pytest.approx(post[i]) and curve[i] > 0.99  # on the impostor mode: noise
    j = int(np.searchsorted(grid, 40.0))
    assert curve[j] == pytest.approx(post[j]) and curve[j] < 1e-6  # on the clean mean: clean
    assert curve[-1] == pytest.approx(post[grid <= 180].max())  # past the impostors the posterior falls; the curve does not


def test_nan_angles_get_nan_scores_and_are_left_out_of_the_fit():
    angles, _, impostors = planted()
    with_nan = np.r_[angles[:500], np.nan, angles[500:], np.nan]
    cal, scores = calibrate(with_nan, impostors)
    assert np.isnan(scores[[500, len(with_nan) - 1]]).all() and np.isfinite(np.delete(scores, [500, len(with_nan) - 1])).all()
    clean_cal, clean_scores = calibrate(angles, impostors)
    assert cal == clean_cal
    np.testing.assert_array_equal(np.delete(scores, [500, len(with_nan) - 1]), clean_scores)


def test_a_higher_cut_gives_a_higher_threshold():
    angles, _, impostors = planted()
    low, low_scores = calibrate(angles, impostors, cut=0.5)
    high, high_scores = calibrate(angles, impostors, cut=0.9)
    assert high.threshold >= low.threshold and high.cut == 0.9
    np.testing.assert_array_equal(low_scores, high_scores)  # the cut moves the threshold, not the scores
    assert (angles > high.threshold).sum() <= (angles > low.threshold).sum()


def test_too_few_angles_or_impostors_give_no_calibration():
    rng = np.random.default_rng(0)
    few = np.r_[rng.normal(40, 6, MIN_ANGLES - 1), np.full(10, np.nan)]
    impostors = rng.normal(85, 8, 1000)
    cal, scores = calibrate(few, impostors)
    assert cal is None and scores.shape == few.shape and np.isnan(scores).all() and scores.dtype == np.float32
    enough = np.r_[few, 41.0]
    assert calibrate(enough, impostors)[0] is not None
    cal, scores = calibrate(enough, np.r_[impostors[: MIN_ANGLES - 1], np.nan, np.nan])
    assert cal is None and np.isnan(scores).all()
    assert calibrate(np.zeros(0), impostors)[0] is None


def test_no_threshold_when_no_angle_looks_like_an_impostor():
    """The impostors sit far below the clean angles: past the clean mean nothing is more likely noise."""
    rng = np.random.default_rng(0)
    angles = np.clip(rng.normal(140, 10, 500), 0, 180)
    cal, scores = calibrate(angles, rng.normal(20, 3, 2000))
    assert cal.threshold is None and cal.to_dict()["threshold"] is None
    assert cal.noise_rate < 0.01 and (scores < 0.5).all()


def test_to_dict_rounds_floats():
    cal, _ = calibrate(*planted()[::2])
    d = cal.to_dict()
    assert set(d) == {"noise_rate", "clean_mean", "clean_std", "impostor_median", "threshold", "cut", "iterations", "angles", "impostors"}
    assert d["noise_rate"] == round(cal.noise_rate, 4) and d["angles"] == CLEAN + NOISE and isinstance(d["iterations"], int)


# -- the pieces ----------------------------------------------------------------------------------------
def test_impostor_density_is_a_smoothed_normalised_histogram():
    impostors = np.r_[np.random.default_rng(0).normal(85, 8, 4000), -5.0, 200.0]  # out of range: clipped to 0 and 180
    density = impostor_density(impostors)
    grid = _grid()
    assert density.shape == grid.shape and (density > 0).all()
    assert density.sum() * GRID_STEP == pytest.approx(1.0, rel=1e-6)
    assert abs(grid[np.argmax(density)] - 85) < 3
    assert density[grid == 40][0] < 1e-6 and density[0] > density[20]  # the clipped one shows at 0 degrees


def test_fit_impostor_mixture_with_the_density_fixed():
    angles, _, impostors = planted(1)
    rate, mean, std, iterations = fit_impostor_mixture(angles, impostor_density(impostors))
    assert rate == pytest.approx(0.2, abs=0.03) and mean == pytest.approx(40, abs=1) and std == pytest.approx(6, abs=1)
    assert 1 <= iterations < 500
    one = fit_impostor_mixture(angles, impostor_density(impostors), max_iter=1)
    assert one[3] == 1
    rate, mean, std, _ = fit_impostor_mixture(np.full(50, 30.0), impostor_density(impostors))
    assert std == 0.5 and mean == pytest.approx(30) and rate < 1e-3  # the std is floored: no collapse on identical angles


def test_the_score_reaches_the_cut_exactly_from_the_threshold_on():
    angles, _, impostors = planted()
    cal, all_scores = calibrate(angles, impostors)
    assert cal.threshold % 0.25 != 0  # the interpolated crossing, not a grid point
    away = np.abs(angles - cal.threshold) > 1e-3
    assert ((all_scores >= cal.cut) == (angles >= cal.threshold))[away].all()
    # and on a fine sweep across the grid step that holds the threshold
    probe = np.linspace(cal.threshold - 0.3, cal.threshold + 0.3, 61)
    _, probe_scores = calibrate(np.r_[angles, probe], impostors)
    refit = calibrate(np.r_[angles, probe], impostors)[0].threshold
    assert ((probe_scores[-61:] >= cal.cut) == (probe >= refit))[np.abs(probe - refit) > 1e-3].all()
