"""A drop threshold from the data itself: where an image's angle is more typical of a wrong label than of its own.

The angles of images to their identity's leave-one-out mean (:func:`cleanface.purify.signals.loo_mean_angle`)
form a mixture: clean images at small angles, mislabelled ones at the angles of an image to
*another* person's mean. That second distribution need not be guessed: it is measured by
pairing images with identities drawn at random (:func:`cleanface.purify.signals.impostor_angles`).
So the mixture has one free component only::

    f(a) = (1 - r) * N(a; mu, sigma) + r * h(a)          h: the impostor density, fixed

EM fits the noise rate ``r`` and the clean Gaussian; the noise score of an angle is the
posterior ``r h(a) / f(a)``, made non-decreasing above the clean mean so that the score
ranks images the way the angle does. The threshold is the smallest angle whose score
reaches the cut (0.5 by default: more likely noise than clean). No label of the truth is
used, only the labels the data carries.

Unlike a two-Gaussian fit (:mod:`cleanface.purify.advice`), which splits whatever two
bumps the angles show, this asks how many images look like impostors, and it adapts to
any embedder: the same code finds thresholds of 52-76 degrees for cleanface's own 128-d
models on LFW and CelebA and 20-21 degrees for dlib's descriptors, which all lie in a
narrow cone (BENCHMARKS.md, "Which signal finds the noise").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GRID_STEP = 0.25  # degrees
SMOOTH = 1.5  # degrees: Gaussian kernel applied to the impostor histogram
MIN_ANGLES = 20


@dataclass(frozen=True)
class Calibration:
    """A fitted impostor mixture.

    Attributes
    ----------
    noise_rate : float
        Estimated share of images whose angle comes from the impostor distribution.
    clean_mean, clean_std : float
        The clean component, degrees.
    impostor_median : float
        Median impostor angle, degrees.
    threshold : float or None
        Smallest angle whose noise score reaches ``cut`` (interpolated between grid points):
        an image is dropped exactly when its score reaches ``cut``, that is, when its angle
        is at least this. None when no angle reaches it (no noise found).
    cut : float
    iterations : int
    angles, impostors : int
        How many finite angles and impostor angles the fit used.
    """

    noise_rate: float
    clean_mean: float
    clean_std: float
    impostor_median: float
    threshold: float | None
    cut: float
    iterations: int
    angles: int
    impostors: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _grid() -> np.ndarray:
    return np.arange(0.0, 180.0 + GRID_STEP / 2, GRID_STEP)


def impostor_density(impostors: np.ndarray) -> np.ndarray:
    """The impostor density on the degree grid (histogram smoothed by a Gaussian of ``SMOOTH`` degrees), floored above 0."""
    grid = _grid()
    edges = np.append(grid - GRID_STEP / 2, grid[-1] + GRID_STEP / 2)
    hist, _ = np.histogram(np.clip(impostors, 0, 180), bins=edges)
    half = int(np.ceil(4 * SMOOTH / GRID_STEP))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * GRID_STEP / SMOOTH) ** 2)
    smooth = np.convolve(hist.astype(np.float64), kernel / kernel.sum(), mode="same")
    density = smooth / (smooth.sum() * GRID_STEP)
    return np.maximum(density, 1e-9)


def _gauss(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def fit_impostor_mixture(angles: np.ndarray, density: np.ndarray, *, max_iter: int = 500, tol: float = 1e-7) -> tuple[float, float, float, int]:
    """EM for ``(noise_rate, clean_mean, clean_std, iterations)`` with the impostor component fixed to ``density``."""
    x = np.asarray(angles, dtype=np.float64)
    h = np.interp(x, _grid(), density)
    rate, mean, std = 0.2, float(np.percentile(x, 30)), max(float(np.std(x)) / 2, 0.5)
    it = 0
    for it in range(1, max_iter + 1):
        clean = (1 - rate) * _gauss(x, mean, std)
        noisy = rate * h
        post = noisy / np.maximum(clean + noisy, 1e-300)
        w = 1 - post
        new_rate = float(post.mean())
        mean = float((w * x).sum() / max(w.sum(), 1e-12))
        std = max(float(np.sqrt((w * (x - mean) ** 2).sum() / max(w.sum(), 1e-12))), 0.5)
        done = abs(new_rate - rate) < tol
        rate = min(max(new_rate, 1e-6), 1 - 1e-6)
        if done:
            break
    return rate, mean, std, it


def score_curve(rate: float, mean: float, std: float, density: np.ndarray) -> np.ndarray:
    """The noise score on the degree grid: the posterior, non-decreasing from the clean mean on (and below it, capped there)."""
    grid = _grid()
    noisy = rate * density
    post = noisy / np.maximum(noisy + (1 - rate) * _gauss(grid, mean, std), 1e-300)
    start = int(np.searchsorted(grid, mean))
    curve = post.copy()
    curve[start:] = np.maximum.accumulate(post[start:])
    curve[:start] = np.minimum(post[:start], curve[start] if start < len(grid) else 1.0)
    return curve


def _crossing(grid: np.ndarray, curve: np.ndarray, mean: float, cut: float) -> float | None:
    """The angle above ``mean`` where the (interpolated, non-decreasing) score first reaches ``cut``; None when it never does."""
    reach = np.flatnonzero((curve >= cut) & (grid >= mean))
    if not len(reach):
        return None
    j = int(reach[0])
    if j == 0 or grid[j - 1] < mean or curve[j] == curve[j - 1]:
        return float(grid[j])
    return float(grid[j - 1] + (cut - curve[j - 1]) / (curve[j] - curve[j - 1]) * (grid[j] - grid[j - 1]))


def calibrate(angles: np.ndarray, impostors: np.ndarray, *, cut: float = 0.5) -> tuple[Calibration | None, np.ndarray]:
    """Fit the mixture; return the calibration and each angle's noise score (NaN where the angle is NaN).

    ``(None, all-NaN scores)`` with fewer than ``MIN_ANGLES`` finite angles or impostor angles:
    too little to calibrate on (the caller falls back to a fixed threshold).
    """
    angles = np.asarray(angles, dtype=np.float64)
    finite = angles[np.isfinite(angles)]
    impostors = np.asarray(impostors, dtype=np.float64)
    impostors = impostors[np.isfinite(impostors)]
    if len(finite) < MIN_ANGLES or len(impostors) < MIN_ANGLES:
        return None, np.full(len(angles), np.nan, dtype=np.float32)
    density = impostor_density(impostors)
    rate, mean, std, iterations = fit_impostor_mixture(finite, density)
    curve = score_curve(rate, mean, std, density)
    grid = _grid()
    threshold = _crossing(grid, curve, mean, cut)
    scores = np.where(np.isfinite(angles), np.interp(np.nan_to_num(angles), grid, curve), np.nan).astype(np.float32)
    cal = Calibration(noise_rate=rate, clean_mean=mean, clean_std=std, impostor_median=float(np.median(impostors)),
                      threshold=threshold, cut=float(cut), iterations=iterations, angles=len(finite), impostors=len(impostors))
    return cal, scores
