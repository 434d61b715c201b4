"""Threshold advice: a two-component Gaussian mixture over the angles to the dominant sub-center.

Clean images pile up at small angles, noisy ones near 90 degrees. A 1-D mixture of two
Gaussians is fitted by EM (NumPy, deterministic initialisation at the 25th and 90th
percentiles); the advised threshold is the angle between the two means where the
weighted densities cross, i.e. where an image becomes more likely noisy than clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_POINTS = 500_000


@dataclass
class Mixture:
    """A fitted two-component mixture; component 0 is the clean (smaller-mean) one.

    Attributes
    ----------
    weights, means, stds : tuple of two floats
    crossing : float or None
        Degrees where the weighted densities are equal between the means; None when
        they never cross there (for example one component swallowed the other).
    iterations : int
    """

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    crossing: float | None
    iterations: int

    def to_dict(self) -> dict:
        return {"weights": list(self.weights), "means": list(self.means), "stds": list(self.stds), "crossing": self.crossing, "iterations": self.iterations}


def _log_normal(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def fit_mixture(angles: np.ndarray, *, max_iter: int = 200, tol: float = 1e-6, seed: int = 0) -> Mixture | None:
    """Fit the two-component mixture to ``angles`` (N,) in degrees; NaN ignored.

    Returns None with fewer than 10 finite angles or when all are (nearly) equal.
    Above ``MAX_POINTS`` angles a seeded sample of that size is used.
    """
    x = np.asarray(angles, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 10 or np.ptp(x) < 1e-6:
        return None
    if len(x) > MAX_POINTS:
        x = np.random.default_rng(seed).choice(x, size=MAX_POINTS, replace=False)
    floor = max(1e-3, 1e-3 * np.std(x))
    mean = np.array([np.percentile(x, 25), np.percentile(x, 90)])
    std = np.full(2, max(np.std(x) / 2, floor))
    weight = np.array([0.5, 0.5])
    previous = -np.inf
    it = 0
    for it in range(1, max_iter + 1):
        logp = np.stack([np.log(weight[j]) + _log_normal(x, mean[j], std[j]) for j in range(2)])  # (2, N)
        top = logp.max(axis=0)
        total = top + np.log(np.exp(logp - top).sum(axis=0))
        resp = np.exp(logp - total)
        nk = resp.sum(axis=1) + 1e-12
        weight = nk / nk.sum()
        mean = (resp @ x) / nk
        std = np.sqrt(np.maximum((resp * (x - mean[:, None]) ** 2).sum(axis=1) / nk, floor**2))
        likelihood = float(total.mean())
        if likelihood - previous < tol:
            break
        previous = likelihood
    order = np.argsort(mean)
    weight, mean, std = weight[order], mean[order], std[order]
    return Mixture(
        weights=(float(weight[0]), float(weight[1])),
        means=(float(mean[0]), float(mean[1])),
        stds=(float(std[0]), float(std[1])),
        crossing=_crossing(weight, mean, std),
        iterations=it,
    )


def _crossing(weight: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float | None:
    """Root of w0 N(x; m0, s0) = w1 N(x; m1, s1) lying between m0 and m1, if any."""
    (w0, w1), (m0, m1), (s0, s1) = weight, mean, std
    # log w0 - log s0 - (x-m0)^2 / (2 s0^2) = log w1 - log s1 - (x-m1)^2 / (2 s1^2)
    a = 1 / (2 * s1**2) - 1 / (2 * s0**2)
    b = m0 / s0**2 - m1 / s1**2
    c = m1**2 / (2 * s1**2) - m0**2 / (2 * s0**2) + np.log(w0 / s0) - np.log(w1 / s1)
    if abs(a) < 1e-12:
        roots = [] if abs(b) < 1e-12 else [-c / b]
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            return None
        roots = [(-b + np.sqrt(disc)) / (2 * a), (-b - np.sqrt(disc)) / (2 * a)]
    inside = [float(r) for r in roots if m0 <= r <= m1]
    return min(inside) if inside else None


def advise_threshold(angles: np.ndarray, *, seed: int = 0) -> tuple[float | None, dict | None]:
    """The advised drop threshold in degrees (or None) and the fitted mixture as a dict (or None)."""
    mixture = fit_mixture(angles, seed=seed)
    if mixture is None:
        return None, None
    return mixture.crossing, mixture.to_dict()
