"""Sub-center analysis as pure functions over arrays.

Notation: N samples, C identities, K sub-centers per identity, D embedding size.
Embeddings ``(N, D)`` may be any float dtype (a float16 memmap is fine); they are read
in chunks, cast to float32 and L2-normalised chunk by chunk, so that 1M x 512 never
needs more than a few hundred MB beyond the input. Each sample is compared only with
its own identity's K sub-centers (a gather), never with all C identities.

Non-finite embeddings (any NaN or inf in a row) are found by :func:`finite_rows`;
such samples get nearest sub-center -1 and NaN cosines and angles, and the decision
rules drop them with the reason ``non-finite embedding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


CHUNK = 16_384
EPS = 1e-12


def unit_rows(
    x: np.ndarray, *, dtype: type | None = None, tol: float | None = None, zero_non_finite: bool = False, chunk: int = CHUNK
) -> np.ndarray:
    """Rows of ``x`` (..., D) scaled to unit length along the last axis: the one row normaliser of purify.

    Rows are read ``chunk`` at a time (a memmap is fine), cast to float32, divided by their
    L2 norm (at least ``EPS``: zero rows stay zero, no NaN) and written in ``dtype``. When
    ``x`` is already in ``dtype`` and its rows have unit length (or zero), it is returned
    as it is, not copied (nor made contiguous); a copy starts at the first chunk that
    needs dividing, the chunks before it copied unchanged.

    Parameters
    ----------
    dtype : float16 or float32, optional
        Of the result; by default float16 when ``x`` is float16 (the sub-centers, 3 GB
        even so at 1M identities) and float32 otherwise.
    tol : float, optional
        How far from 1 a norm may be for the row to count as unit. By default the rounding
        of ``dtype`` (2e-3 for float16, 1e-5 for float32). With 0 only rows whose float32
        norm is exactly 1 are kept as they are, so the result is bitwise the divided one.
    zero_non_finite : bool
        Rows holding NaN or inf become zero rows (else they give NaN rows).
    """
    x = np.asarray(x)
    dtype = np.dtype(dtype or (np.float16 if x.dtype == np.float16 else np.float32)).type
    tol = (2e-3 if dtype == np.float16 else 1e-5) if tol is None else tol
    flat = x.reshape(-1, x.shape[-1])
    if dtype == np.float32 and x.dtype != dtype:  # copied anyway: cast into the result and normalised there
        out = np.empty(flat.shape, dtype=np.float32)
        for s in range(0, len(flat), chunk):
            block = out[s : s + chunk]
            block[...] = flat[s : s + chunk]
            if zero_non_finite:
                _zero_non_finite(block, in_place=True)
            block /= np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), EPS)[:, None]
        return out.reshape(x.shape)
    out = None
    for s in range(0, len(flat), chunk):
        block = np.asarray(flat[s : s + chunk], dtype=np.float32)  # the rows of x themselves when x is float32
        same = x.dtype == dtype  # the block holds the rows of x as they are
        if zero_non_finite:
            cleaned = _zero_non_finite(block)
            same, block = same and cleaned is block, cleaned
        norm = np.sqrt(np.einsum("ij,ij->i", block, block))
        if out is None and same and bool(np.all((np.abs(norm - 1.0) <= tol) | (norm == 0.0))):
            continue  # unit rows so far: nothing to write yet
        if out is None:
            out = np.empty(flat.shape, dtype=dtype)
            out[:s] = flat[:s]
        np.divide(block, np.maximum(norm, EPS)[:, None], out=out[s : s + chunk])  # no temporary: written in place
    return x if out is None else out.reshape(x.shape)


def _zero_non_finite(block: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """``block`` (B, D) float32 with its rows holding NaN or inf set to zero: in place, or else a copy when any is."""
    bad = ~np.isfinite(block).all(axis=1)
    if not bad.any():
        return block
    if in_place:
        block[bad] = 0.0
        return block
    return np.where(bad[:, None], np.float32(0.0), block)


def finite_values(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x)``, without its cost when every value is finite (then ``x`` itself): nan_to_num takes 6 times as long as the check."""
    return x if np.isfinite(x).all() else np.nan_to_num(x)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 with rows of unit length (zero rows stay zero): :func:`unit_rows` with ``dtype=float32, tol=0``."""
    return unit_rows(x, dtype=np.float32, tol=0.0)


def cos_to_degrees(cos: np.ndarray) -> np.ndarray:
    """Angles in degrees of cosines (clipped to [-1, 1]; NaN stays NaN)."""
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def finite_rows(embeddings: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """Which rows hold only finite values: bool (N,)."""
    n = len(embeddings)
    out = np.empty(n, dtype=bool)
    for s in range(0, n, chunk):
        out[s : s + chunk] = np.isfinite(np.asarray(embeddings[s : s + chunk], dtype=np.float32)).all(axis=1)
    return out


def _check_shapes(embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {embeddings.shape}")
    if centers.ndim != 3:
        raise ValueError(f"centers must have shape (C, K, D), got {centers.shape}")
    if labels.shape != (len(embeddings),):
        raise ValueError(f"labels must have shape ({len(embeddings)},) to match the embeddings, got {labels.shape}")
    if embeddings.shape[1] != centers.shape[2]:
        raise ValueError(f"embeddings are {embeddings.shape[1]}-d but centers are {centers.shape[2]}-d")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(centers)):
        raise ValueError(f"labels must lie in [0, {len(centers)}), got range [{labels.min()}, {labels.max()}]")


def nearest_subcenter(
    embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray, *, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each sample to each sub-center of its own identity, and the nearest one.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D)
    labels : ndarray of shape (N,), int, values in [0, C)
    centers : ndarray of shape (C, K, D)
        float32, or float16 to halve their memory (the cosines are computed in float32).

    Returns
    -------
    nearest : ndarray of shape (N,), int64
        Index in [0, K) of the most similar own sub-center (the lowest index on ties);
        -1 for a non-finite embedding.
    cos : ndarray of shape (N, K), float32
        Cosine to each own sub-center; NaN rows for non-finite embeddings.
    """
    labels = np.asarray(labels, dtype=np.int64)
    centers = unit_rows(centers)
    _check_shapes(embeddings, labels, centers)
    from cleanface.purify import shards

    arrays = {"embeddings": embeddings, "labels": labels, "centers": centers}
    parts = list(shards.current().imap(_nearest_block, shards.blocks(len(embeddings), chunk), arrays))
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty((0, centers.shape[1]), dtype=np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _nearest_block(lo: int, hi: int, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_subcenter` of rows ``lo:hi``: (nearest (B,), cos (B, K))."""
    e = np.asarray(a["embeddings"][lo:hi], dtype=np.float32)
    ok = np.isfinite(e).all(axis=1)
    e = unit_rows(np.where(ok[:, None], e, 0.0), dtype=np.float32, tol=0.0)
    c = np.matmul(np.asarray(a["centers"][np.asarray(a["labels"][lo:hi])], dtype=np.float32), e[:, :, None])[:, :, 0]  # (B, K)
    c[~ok] = np.nan
    best = np.argmax(np.where(ok[:, None], c, 0.0), axis=1)
    return np.where(ok, best, -1).astype(np.int64), c.astype(np.float32, copy=False)


def subcenter_votes(nearest: np.ndarray, labels: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """Votes of each identity's samples for its sub-centers: int64 (C, K); samples with nearest -1 do not vote."""
    nearest = np.asarray(nearest, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    ok = nearest >= 0
    flat = labels[ok] * k + nearest[ok]
    return np.bincount(flat, minlength=num_classes * k).reshape(num_classes, k)


def dominant_subcenters(nearest: np.ndarray, labels: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """The most voted sub-center of each identity: int64 (C,).

    Ties go to the lowest sub-center index; an identity without any (finite) sample gets -1.
    """
    votes = subcenter_votes(nearest, labels, num_classes, k)
    dominant = np.argmax(votes, axis=1).astype(np.int64)  # argmax returns the first maximum
    dominant[votes.sum(axis=1) == 0] = -1
    return dominant


def angle_to_dominant(cos: np.ndarray, labels: np.ndarray, dominant: np.ndarray) -> np.ndarray:
    """Angle in degrees between each sample and its identity's dominant sub-center: float32 (N,).

    Parameters
    ----------
    cos : ndarray of shape (N, K)
        From :func:`nearest_subcenter`.
    labels : ndarray of shape (N,)
    dominant : ndarray of shape (C,)
        From :func:`dominant_subcenters`; -1 (no dominant) gives NaN.
    """
    labels = np.asarray(labels, dtype=np.int64)
    d = dominant[labels]
    picked = cos[np.arange(len(labels)), np.maximum(d, 0)]
    picked = np.where(d >= 0, picked, np.nan)
    return cos_to_degrees(picked).astype(np.float32)


def non_dominant(nearest: np.ndarray, labels: np.ndarray, dominant: np.ndarray) -> np.ndarray:
    """True where a (finite) sample's nearest sub-center is not its identity's dominant one: bool (N,)."""
    nearest = np.asarray(nearest, dtype=np.int64)
    return (nearest >= 0) & (nearest != dominant[np.asarray(labels, dtype=np.int64)])


@dataclass
class IdentityStats:
    """Per-identity statistics, every array indexed by label.

    Attributes
    ----------
    count : ndarray (C,), int64
        Samples with a finite angle.
    votes : ndarray (C, K), int64
    angle_mean, angle_std : ndarray (C,), float32
        Of the angles to the dominant sub-center (NaN for empty identities).
    angle_p10, angle_p90, angle_spread : ndarray (C,), float32
        10th and 90th percentiles (linear interpolation) and their difference.
    drop_share : ndarray (C,), float32
        Share of the identity's samples flagged in ``dropped`` (NaN when empty).
    """

    count: np.ndarray
    votes: np.ndarray
    angle_mean: np.ndarray
    angle_std: np.ndarray
    angle_p10: np.ndarray
    angle_p90: np.ndarray
    angle_spread: np.ndarray
    drop_share: np.ndarray

    def arrays(self, prefix: str = "identity_") -> dict[str, np.ndarray]:
        """The fields as a flat dict of arrays (for ``analysis.npz``)."""
        return {prefix + name: getattr(self, name) for name in self.__dataclass_fields__}


def group_percentile(values: np.ndarray, groups: np.ndarray, num_groups: int, q: float) -> np.ndarray:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values`` within each group: float32 (G,).

    NaN values are ignored; a group without values gets NaN. One sort, no per-group loop.
    """
    ok = ~np.isnan(values)
    v, g = values[ok].astype(np.float64), groups[ok]
    order = np.lexsort((v, g))
    v = v[order]
    counts = np.bincount(g, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(num_groups, np.nan, dtype=np.float64)
    has = counts > 0
    pos = starts[has] + (q / 100.0) * (counts[has] - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.ceil(pos).astype(np.int64)
    out[has] = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return out.astype(np.float32)


def identity_stats(
    angles: np.ndarray, labels: np.ndarray, nearest: np.ndarray, dropped: np.ndarray, num_classes: int, k: int
) -> IdentityStats:
    """Per-identity votes, angle statistics and drop share (see :class:`IdentityStats`).

    Parameters
    ----------
    angles : ndarray of shape (N,)
        Degrees to the dominant sub-center (NaN for non-finite samples).
    labels, nearest : ndarray of shape (N,)
    dropped : ndarray of shape (N,), bool
        Which samples count as dropped for ``drop_share``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    a = np.asarray(angles, dtype=np.float64)
    ok = ~np.isnan(a)
    count = np.bincount(labels[ok], minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    s1 = np.bincount(labels[ok], weights=a[ok], minlength=num_classes)
    s2 = np.bincount(labels[ok], weights=a[ok] ** 2, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
        drop_share = np.bincount(labels, weights=np.asarray(dropped, dtype=np.float64), minlength=num_classes) / total
    p10 = group_percentile(a, labels, num_classes, 10)
    p90 = group_percentile(a, labels, num_classes, 90)
    return IdentityStats(
        count=count.astype(np.int64),
        votes=subcenter_votes(nearest, labels, num_classes, k),
        angle_mean=mean.astype(np.float32),
        angle_std=std.astype(np.float32),
        angle_p10=p10,
        angle_p90=p90,
        angle_spread=(p90 - p10).astype(np.float32),
        drop_share=drop_share.astype(np.float32),
    )
