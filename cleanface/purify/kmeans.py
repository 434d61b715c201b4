"""Sub-centers without a training run: spherical k-means of each identity's embeddings, every identity at once.

:func:`spherical_kmeans` estimates the (C, K, D) sub-centers that
:func:`cleanface.purify.decisions.decide` otherwise takes from a sub-center head, from
the embeddings alone (a pretrained model's, or any tool's). Nothing loops over
identities: rows are sorted by identity once (stable) and every step works on chunks of
rows, so 1M images of 100k identities take seconds per iteration.

* **rows**: cast to float32 and scaled to unit length; a row holding NaN or inf (or all
  zeros) takes no part and gets the assignment -1;
* **seeding** (k-means++ on the sphere, the identity's mean first): sub-center 0 of an
  identity is the direction of the mean of its embeddings; sub-center j = 1 .. K-1 is one
  of its embeddings, drawn with probability proportional to ``1 - cos`` to the nearest
  sub-center chosen so far (``|a - b|^2 = 2 (1 - cos)`` for unit vectors: the D^2 weighting
  of k-means++), for all identities in one vectorised draw seeded with ``seed``. The mean
  first keeps sub-center 0 on the bulk of an identity's images, and the D^2 draws go to
  the images far from it: noise, which then holds the non-dominant sub-centers as in
  sub-center ArcFace;
* **Lloyd iterations**: each row goes to its nearest own sub-center (largest cosine, ties
  to the lowest index), each sub-center moves to the direction of the sum of its rows (an
  empty one stays where it was), until no assignment changes or ``max_iter`` passes;
* an identity with fewer usable embeddings than K gets its mean K times (the (C, K, D)
  array stays rectangular; all its images are measured against the mean); one without
  any gets zero vectors (nothing is measured against it).

The result depends only on the inputs, ``k``, ``seed``, ``max_iter`` and ``chunk``
(sums are taken in a fixed order, without BLAS threads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanface.errors import ConfigError, DataError
from cleanface.purify._threads import parallel_map
from cleanface.purify.analysis import unit_rows

CHUNK = 16_384  # rows per step of the sums
BLOCK_ROWS, BLOCK_IDS = 512, 16  # rows and identities per matrix product of the cosines
PARALLEL_ROWS = 65_536  # rows per task of the thread pool
MAX_ITER = 20  # Lloyd passes at most
FLOAT32_BYTES = 4 << 30  # the sorted unit rows are held in float32 up to this size, in float16 above
EPS = 1e-12


@dataclass
class KMeansFit:
    """The result of :func:`spherical_kmeans`.

    ``centers`` (C, K, D) float32 unit rows (zero rows for an identity without a usable
    embedding); ``assignment`` (N,) int16: the sub-center of each row in input order, -1 for
    a row left out; ``iterations``: assignment passes made; ``converged``: the last pass
    changed no assignment.
    """

    centers: np.ndarray
    assignment: np.ndarray
    iterations: int
    converged: bool


def spherical_kmeans(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 3, seed: int = 0,
                     max_iter: int = MAX_ITER, chunk: int = CHUNK) -> KMeansFit:
    """K sub-centers per identity by spherical k-means over its own embeddings (see the module docstring).

    ``embeddings`` (N, D), any float dtype (a memmap is read chunk by chunk, once);
    ``labels`` (N,) in [0, ``num_classes``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 1 <= int(k) <= 1024:
        raise ConfigError(f"the number of sub-centers k must lie within [1, 1024], got {k!r}")
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise DataError(f"embeddings of shape {embeddings.shape} do not match {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    k, chunk = int(k), int(chunk)
    order, x, usable = _sorted_unit_rows(embeddings, labels, chunk)
    lab = labels[order]
    counts = np.bincount(lab[usable], minlength=num_classes)
    # two (C, K, D) buffers, reused: the current sub-centers and the next ones (first touches of fresh memory are slow)
    centers, spare = (np.empty((num_classes, k, x.shape[1]), dtype=np.float32) for _ in range(2))
    _seed(x, lab, usable, counts, k, seed, chunk, centers, spare)
    assign = np.full(len(lab), -1, dtype=np.int16)
    iterations, converged = 0, False
    for iterations in range(1, int(max_iter) + 1):
        new = _assign(x, lab, usable, centers)
        if np.array_equal(new, assign):
            converged = True
            break
        assign = new
        centers, spare = _update(x, lab, usable, assign, centers, spare, chunk), centers
    del spare
    small = counts < k
    centers[small] = centers[small, :1]  # the mean, K times (Lloyd keeps it so; this makes it exact)
    out = np.empty_like(assign)
    out[order] = assign
    return KMeansFit(centers, out, iterations, converged)


def _sorted_unit_rows(embeddings: np.ndarray, labels: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows in label order (stable), unit length, zero where not usable; the order; which rows are usable."""
    n, d = embeddings.shape
    in_order = bool(np.all(labels[1:] >= labels[:-1]))
    order = np.arange(n) if in_order else np.argsort(labels, kind="stable")
    x = np.empty((n, d), dtype=np.float32 if n * d * 4 <= FLOAT32_BYTES else np.float16)
    usable = np.empty(n, dtype=bool)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        block = np.array(embeddings[s:e] if in_order else embeddings[order[s:e]], dtype=np.float32)
        ok = np.isfinite(block).all(axis=1)
        block[~ok] = 0
        ok &= np.any(block != 0, axis=1)
        x[s:e] = unit_rows(block, dtype=np.float32)
        usable[s:e] = ok
    return order, x, usable


def _rows(x: np.ndarray, s: int, e: int) -> np.ndarray:
    return np.asarray(x[s:e], dtype=np.float32)


def _own_cos(x: np.ndarray, lab: np.ndarray, flat: np.ndarray, k: int) -> np.ndarray:
    """Cosine of each row to the k sub-centers of its own identity, ``flat[lab * k + j]``: (N, k) float32.

    Rows come in blocks of at most ``BLOCK_ROWS`` rows and ``BLOCK_IDS`` identities; each block
    is one small matrix product with the block's contiguous slice of ``flat`` (no gather of a
    (rows, k, D) array), blocks in parallel on single-threaded BLAS.
    """
    n = len(lab)
    out = np.empty((n, k), dtype=np.float32)
    offsets = np.arange(k)

    def fill(span: tuple[int, int]) -> None:
        s, stop = span
        while s < stop:
            e = min(stop, s + BLOCK_ROWS, int(np.searchsorted(lab, lab[s] + BLOCK_IDS)))
            lc = lab[s:e]
            lo, hi = int(lc[0]), int(lc[-1]) + 1
            g = _rows(x, s, e) @ flat[lo * k : hi * k].T
            out[s:e] = np.take_along_axis(g, (lc - lo)[:, None] * k + offsets, axis=1)
            s = e

    parallel_map(fill, [(s, min(n, s + PARALLEL_ROWS)) for s in range(0, n, PARALLEL_ROWS)])
    return out


def _segment_sums(x: np.ndarray, keys: np.ndarray, use: np.ndarray, sums: np.ndarray, chunk: int) -> np.ndarray:
    """Sum of the usable rows of each key into ``sums`` (keys, D) float32; keys nondecreasing up to a small spread per chunk."""
    from scipy.sparse import csr_matrix

    sums.fill(0)
    for s in range(0, len(keys), chunk):
        e = min(len(keys), s + chunk)
        kc, uc = keys[s:e], use[s:e]
        if not uc.any():
            continue
        lo, hi = int(kc[uc].min()), int(kc[uc].max()) + 1
        cols = np.flatnonzero(uc)
        onehot = csr_matrix((np.ones(len(cols), dtype=np.float32), (kc[cols] - lo, cols)), shape=(hi - lo, e - s))
        sums[lo:hi] += onehot @ _rows(x, s, e)
    return sums


def _normalise(sums: np.ndarray, chunk: int) -> np.ndarray:
    """``sums`` scaled to unit rows in place (zero rows stay zero)."""
    for s in range(0, len(sums), chunk):
        block = sums[s : s + chunk]
        block /= np.maximum(np.linalg.norm(block, axis=1), EPS)[:, None]
    return sums


def _segment_argmax(score: np.ndarray, lab: np.ndarray, num_classes: int) -> np.ndarray:
    """Per identity, the first row holding its largest score: (C,) int64, -1 where there is none above -inf."""
    pick = np.full(num_classes, -1, dtype=np.int64)
    if len(lab) == 0:
        return pick
    sizes = np.bincount(lab, minlength=num_classes)
    present = np.flatnonzero(sizes)
    best = np.maximum.reduceat(score, np.searchsorted(lab, present))
    rows = np.flatnonzero(score == np.repeat(best, sizes[present]))
    found, first = np.unique(lab[rows], return_index=True)
    pick[found] = rows[first]
    pick[present[best == -np.inf]] = -1
    return pick


def _seed(x: np.ndarray, lab: np.ndarray, usable: np.ndarray, counts: np.ndarray, k: int, seed: int, chunk: int,
          centers: np.ndarray, spare: np.ndarray) -> None:
    """Initial sub-centers into ``centers``: each identity's mean direction, then K-1 rows drawn by D^2 weighting (seeded)."""
    num_classes = len(centers)
    mean = spare.reshape(-1, spare.shape[2])[:num_classes]
    centers[:, 0] = _normalise(_segment_sums(x, lab, usable, mean, chunk), chunk)
    centers[:, 1:] = centers[:, :1]
    draw = usable & (counts[lab] >= k)
    if k == 1 or not draw.any():
        return
    rng = np.random.default_rng(seed)
    best = _own_cos(x, lab, centers[:, 0], 1)[:, 0]
    for j in range(1, k):
        weight = np.clip(1.0 - best, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.log(rng.random(len(lab))) / weight  # an exponential race: row i wins with probability weight_i / sum
        score[~draw | (weight <= 0) | ~np.isfinite(score)] = -np.inf
        pick = _segment_argmax(score, lab, num_classes)
        chosen = pick >= 0
        centers[chosen, j] = np.asarray(x[pick[chosen]], dtype=np.float32)
        best = np.maximum(best, _own_cos(x, lab, centers[:, j], 1)[:, 0])


def _assign(x: np.ndarray, lab: np.ndarray, usable: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The nearest own sub-center of each row (ties to the lowest index): (N,) int16, -1 for rows left out."""
    num_classes, k, d = centers.shape
    out = np.argmax(_own_cos(x, lab, centers.reshape(num_classes * k, d), k), axis=1).astype(np.int16)
    out[~usable] = -1
    return out


def _update(x: np.ndarray, lab: np.ndarray, usable: np.ndarray, assign: np.ndarray, centers: np.ndarray, out: np.ndarray,
            chunk: int) -> np.ndarray:
    """Into ``out``: each sub-center moved to the direction of the sum of its rows; an empty one stays where it was."""
    num_classes, k, d = centers.shape
    keys = lab * k + np.maximum(assign, 0)
    _normalise(_segment_sums(x, keys, usable, out.reshape(num_classes * k, d), chunk), chunk)
    empty = np.bincount(keys[usable], minlength=num_classes * k).reshape(num_classes, k) == 0
    out[empty] = centers[empty]
    return out
