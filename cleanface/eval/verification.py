"""Face-verification metrics over pair scores: k-fold accuracy, exact ROC, AUC, TAR at FAR.

Every function takes ``scores`` (P,), the similarity of each pair (cosine of the two
embeddings: higher means more alike), and ``same`` (P,), True for a matched pair.

* :func:`kfold_accuracy` follows the LFW protocol: on each fold the threshold that
  maximises accuracy on the *other* folds is applied to the held-out fold, and the
  mean and standard deviation of the held-out accuracies are reported. A pair is
  called "same" when its score is strictly above the threshold.
* :func:`roc_curve` is exact: one point per distinct score (a pair is accepted when its
  score is at least the threshold), computed by sorting, no grid.
* :func:`verify` bundles them into the ``eval.json`` shape of ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import numpy as np

from cleanface.errors import ConfigError, DataError

#: FAR levels reported by :func:`verify`, as ``eval.json`` keys.
FAR_LEVELS = {"1e-2": 1e-2, "1e-3": 1e-3}
#: Most points of the ROC curve kept in ``eval.json``.
ROC_POINTS = 200


def _check(scores, same, *, both_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and bool flags, both 1-D of the same length P > 0."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1 or y.ndim != 1:
        raise DataError(f"scores and same must be 1-D, got shapes {s.shape} and {y.shape}")
    if len(s) != len(y):
        raise DataError(f"scores and same differ in length: {len(s)} scores, {len(y)} flags")
    if len(s) == 0:
        raise DataError("no pairs to evaluate: scores and same are empty")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all():
            raise DataError(f"same must hold booleans (or 0/1), got dtype {y.dtype}")
        y = y.astype(bool)
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(s[first]) else "infinite"
        raise DataError(f"{int(bad.sum())} of {len(s)} scores are not finite (pair {first} is {kind}); check the embeddings")
    if both_classes and (y.all() or not y.any()):
        which = "matched" if y.all() else "mismatched"
        raise DataError(f"all {len(y)} pairs are {which}; verification needs both matched and mismatched pairs")
    return s, y


def _folds_of(n: int, folds: int, fold) -> np.ndarray:
    """Fold number of each of ``n`` pairs: ``fold`` checked, or ``folds`` contiguous blocks."""
    if fold is not None:
        f = np.asarray(fold)
        if f.shape != (n,):
            raise DataError(f"fold must have one entry per pair ({n}), got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.integer):
            raise DataError(f"fold must hold integers, got dtype {f.dtype}")
        if len(np.unique(f)) < 2:
            raise DataError("fold assigns every pair to one fold; cross-validation needs at least 2 folds")
        return f
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds must be an integer of at least 2, got {folds!r}")
    if folds > n:
        raise DataError(f"only {n} pairs for {folds} folds; use fewer folds or more pairs")
    return np.arange(n, dtype=np.int64) * int(folds) // n


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy of ``score > threshold`` on these pairs.

    Candidates are the midpoints between consecutive distinct scores, plus one just
    below the lowest score (all "same") and the highest score (all "different").
    Among equally good candidates the middle one (lower median) is taken.

    Parameters
    ----------
    scores : ndarray of float, shape (P,)
    same : ndarray of bool, shape (P,)

    Returns
    -------
    float
    """
    u = np.unique(scores)
    cand = np.empty(len(u) + 1, dtype=np.float64)
    cand[0] = np.nextafter(u[0], -np.inf)
    cand[1:-1] = (u[:-1] + u[1:]) / 2
    cand[-1] = u[-1]
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    correct = (len(pos) - np.searchsorted(pos, cand, side="right")) + np.searchsorted(neg, cand, side="right")
    best = np.flatnonzero(correct == correct.max())
    return float(cand[best[(len(best) - 1) // 2]])


def kfold_accuracy(scores, same, folds: int = 10, fold=None) -> tuple[float, float, float]:
    """Cross-validated verification accuracy (LFW protocol).

    Parameters
    ----------
    scores : array-like of float, shape (P,)
        Pair similarities.
    same : array-like of bool, shape (P,)
        True for matched pairs.
    folds : int
        Number of contiguous blocks of pairs, in order, when ``fold`` is not given.
    fold : array-like of int, shape (P,), optional
        Explicit fold of each pair (e.g. the folds of LFW ``pairs.txt``).

    Returns
    -------
    mean, std : float
        Mean and (population) standard deviation of the held-out fold accuracies.
    threshold : float
        Mean of the thresholds chosen on each fold's complement.

    Raises
    ------
    DataError
        Mismatched lengths, no pairs, non-finite scores, a single class, bad ``fold``.
    """
    s, y = _check(scores, same)
    f = _folds_of(len(s), folds, fold)
    accs, thresholds = [], []
    for k in np.unique(f):
        test = f == k
        t = best_threshold(s[~test], y[~test])
        accs.append(np.mean((s[test] > t) == y[test]))
        thresholds.append(t)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thresholds))


def roc_curve(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve: accept a pair when its score is at least the threshold.

    Parameters
    ----------
    scores : array-like of float, shape (P,)
    same : array-like of bool, shape (P,)

    Returns
    -------
    far, tar : ndarray of float64, shape (U + 1,)
        False and true accept rates, non-decreasing, from (0, 0) at threshold ``+inf``
        to (1, 1) at the lowest score (U distinct scores). With no mismatched pairs
        ``far`` is all 0; with no matched pairs ``tar`` is all 0.
    thresholds : ndarray of float64, shape (U + 1,)
        ``+inf`` then the distinct scores in decreasing order.
    """
    s, y = _check(scores, same, both_classes=False)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    npos, nneg = int(y.sum()), len(y) - int(y.sum())
    tar = np.r_[0.0, tp / npos] if npos else np.zeros(len(last) + 1)
    far = np.r_[0.0, fp / nneg] if nneg else np.zeros(len(last) + 1)
    return far, tar, np.r_[np.inf, s[last]]


def auc(far, tar) -> float:
    """Area under an ROC curve by the trapezoidal rule.

    Parameters
    ----------
    far, tar : array-like of float, shape (M,)
        Points in order of non-decreasing ``far`` (as :func:`roc_curve` returns them).

    Returns
    -------
    float
    """
    x, z = np.asarray(far, dtype=np.float64), np.asarray(tar, dtype=np.float64)
    if x.shape != z.shape or x.ndim != 1:
        raise DataError(f"far and tar must be 1-D of the same length, got shapes {x.shape} and {z.shape}")
    return float(np.sum(np.diff(x) * (z[1:] + z[:-1]) / 2)) if len(x) > 1 else 0.0


def tar_at_far(scores, same, far_target: float) -> float:
    """The largest true accept rate whose false accept rate is at most ``far_target``.

    Parameters
    ----------
    scores : array-like of float, shape (P,)
    same : array-like of bool, shape (P,)
    far_target : float
        In [0, 1].

    Returns
    -------
    float
        0 when there are no mismatched (or no matched) pairs.
    """
    if not 0.0 <= far_target <= 1.0:
        raise ConfigError(f"far_target must lie in [0, 1], got {far_target}")
    s, y = _check(scores, same, both_classes=False)
    if y.all() or not y.any():
        return 0.0
    far, tar, _ = roc_curve(s, y)
    return float(tar[far <= far_target].max())


def downsample_curve(far: np.ndarray, tar: np.ndarray, points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    """At most ``points`` evenly spaced points of a curve, both endpoints kept, as lists."""
    n = len(far)
    keep = np.arange(n) if n <= points else np.unique(np.round(np.linspace(0, n - 1, max(points, 2))).astype(np.int64))
    return [float(v) for v in far[keep]], [float(v) for v in tar[keep]]


def verify(scores, same, folds: int = 10, fold=None) -> dict:
    """All verification results of a set of scored pairs, in the ``eval.json`` shape.

    Parameters
    ----------
    scores : array-like of float, shape (P,)
    same : array-like of bool, shape (P,)
    folds : int
        Contiguous folds for :func:`kfold_accuracy` when ``fold`` is not given.
    fold : array-like of int, shape (P,), optional
        Explicit folds.

    Returns
    -------
    dict
        ``{"num_pairs", "accuracy", "accuracy_std", "threshold", "tar_at_far": {"1e-2",
        "1e-3"}, "auc", "roc": {"far", "tar"}}`` with plain Python numbers; the ROC
        lists hold at most :data:`ROC_POINTS` points.
    """
    s, y = _check(scores, same)
    mean, std, threshold = kfold_accuracy(s, y, folds=folds, fold=fold)
    far, tar, _ = roc_curve(s, y)
    roc_far, roc_tar = downsample_curve(far, tar)
    return {
        "num_pairs": int(len(s)),
        "accuracy": mean,
        "accuracy_std": std,
        "threshold": threshold,
        "tar_at_far": {key: tar_at_far(s, y, level) for key, level in FAR_LEVELS.items()},
        "auc": auc(far, tar),
        "roc": {"far": roc_far, "tar": roc_tar},
    }
