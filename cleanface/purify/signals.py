"""Per-image signals computed from the embeddings alone, with no classifier weight.

The sub-center weights of a model trained on the noisy labels absorb the noise they were
trained on: a mislabelled image pulls its identity's sub-centers towards itself. The
mean of the *other* images of an identity is free of that pull, and on real faces it
ranks noise much better (LFW at 20% noise, cleanface's own model: ROC AUC 0.95 for the
angle to the leave-one-out identity mean against 0.86 for the angle to the dominant
sub-center; BENCHMARKS.md, "Which signal finds the noise").

* :func:`identity_sums`: the (weighted) sum of each identity's unit embeddings;
* :func:`loo_mean_angle`: each image's angle to the mean of the other images of its identity;
* :func:`impostor_angles`: angles of images to the means of identities chosen at random
  among the others, the reference distribution of a wrong label (see
  :mod:`cleanface.purify.calibration`).

Embeddings may be a memmap of any float dtype: they are read in chunks and normalised
chunk by chunk, never copied whole.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

from cleanface.purify import shards
from cleanface.purify.analysis import cos_to_degrees, finite_values, unit_rows

CHUNK = 65_536
IMPOSTOR_SAMPLE = 200_000  # images whose impostor angles are measured, at most
IMPOSTORS_PER_IMAGE = 4


def _unit(block: np.ndarray) -> np.ndarray:
    """float32 unit rows of one chunk (non-finite rows stay non-finite; callers mask them)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return unit_rows(block, dtype=np.float32)


def identity_sums(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, weights: np.ndarray | None = None, *,
                  chunk: int = CHUNK) -> np.ndarray:
    """(C, D) float32: the sum over each identity of its unit embeddings times ``weights`` (1 when None).

    Rows that are not finite count with weight 0. Each block's sums (:func:`block_sums`,
    on the runner in effect, :mod:`cleanface.purify.shards`) are added in block order.
    """
    return identity_sums_many(embeddings, [labels], num_classes, [weights], chunk=chunk)[0]


def identity_sums_many(embeddings: np.ndarray, labels: list[np.ndarray], num_classes: int, weights: list[np.ndarray | None], *,
                       chunk: int = CHUNK) -> list[np.ndarray]:
    """:func:`identity_sums` for several labellings and weights of the same rows, in one pass (the same numbers as one pass each)."""
    labels = [np.asarray(lab, dtype=np.int64) for lab in labels]
    sums = [np.zeros((num_classes, embeddings.shape[1]), dtype=np.float32) for _ in labels]
    arrays = {"embeddings": embeddings, **{f"labels{i}": lab for i, lab in enumerate(labels)},
              **{f"weights{i}": w for i, w in enumerate(weights) if w is not None}}
    for parts in shards.current().imap(_sums_block, shards.blocks(len(embeddings), chunk), arrays, count=len(labels)):
        for total, (present, partial) in zip(sums, parts):
            total[present] += partial
    return sums


def _sums_block(lo: int, hi: int, a: dict, *, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    x = _unit(a["embeddings"][lo:hi])
    finite = np.isfinite(x).all(axis=1)
    x = finite_values(x)
    out = []
    for i in range(count):
        w = np.ones(len(x), np.float32) if f"weights{i}" not in a else np.asarray(a[f"weights{i}"][lo:hi], dtype=np.float32)
        out.append(block_sums(np.asarray(a[f"labels{i}"][lo:hi]), x, np.where(finite, w, 0.0).astype(np.float32), np.float32))
    return out


def block_sums(keys: np.ndarray, rows: np.ndarray, weights: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The keys present and, for each, the sum of ``weights[i] * rows[i]`` over its rows, in row order (rows must be finite).

    A sparse (keys present x rows) weight matrix times the rows: the sums of ``np.add.at``,
    8 times faster on identity-ordered data.
    """
    present, row_of = np.unique(keys, return_inverse=True)
    weight = csr_matrix((np.asarray(weights, dtype=dtype), (row_of, np.arange(len(rows)))), shape=(len(present), len(rows)))
    return present, weight @ rows


def loo_mean_angle(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, weights: np.ndarray | None = None, *,
                   chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Degrees from each image to the mean of the other images of its identity, and the (C, D) sums used.

    With ``weights`` (N,) each image counts with its weight in the means (an image of weight 0,
    for example one dropped in an earlier round, is scored against the others without
    counting itself or being counted). NaN where no other image of the identity counts
    (a lone image cannot be judged this way) and for non-finite embeddings.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sums = identity_sums(embeddings, labels, num_classes, weights, chunk=chunk)
    arrays = {"embeddings": embeddings, "labels": labels, "sums": sums, **({} if weights is None else {"weights": weights})}
    parts = list(shards.current().imap(_loo_block, shards.blocks(len(labels), chunk), arrays))
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return out, sums


def _loo_block(lo: int, hi: int, a: dict) -> np.ndarray:
    x = _unit(a["embeddings"][lo:hi])
    w = np.ones(len(x), np.float32) if "weights" not in a else np.asarray(a["weights"][lo:hi], dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    xf = finite_values(x)
    rest = np.asarray(a["sums"][np.asarray(a["labels"][lo:hi])]) - xf * np.where(finite, w, 0.0)[:, None]
    norm = np.linalg.norm(rest, axis=1)
    cos = np.einsum("nd,nd->n", xf, rest) / np.where(norm > 0, norm, 1.0)
    ok = finite & (norm > 1e-6)
    return np.where(ok, cos_to_degrees(cos), np.nan).astype(np.float32)


def impostor_angles(embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, *, per_image: int = IMPOSTORS_PER_IMAGE,
                    sample: int = IMPOSTOR_SAMPLE, seed: int = 0, chunk: int = 8_192) -> np.ndarray:
    """Degrees from a seeded sample of images to the means of ``per_image`` other identities each, drawn at random.

    This is what the angle to the own identity's mean looks like under a wrong label (the
    image belongs to someone else). The other identities are drawn uniformly among those
    with a mean (non-zero sum), never the image's own. Empty when fewer than two identities
    have a mean. Read and computed ``chunk`` sampled images at a time.
    """
    labels = np.asarray(labels, dtype=np.int64)
    norm = np.linalg.norm(sums, axis=1)
    usable = np.flatnonzero(norm > 1e-6)
    if len(usable) < 2 or len(labels) == 0:
        return np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), size=min(sample, len(labels)), replace=False))
    own = labels[rows]
    position = np.searchsorted(usable, own)
    has_own = (position < len(usable)) & (usable[np.minimum(position, len(usable) - 1)] == own)
    draw = rng.integers(0, len(usable) - has_own.astype(np.int64)[:, None], size=(len(rows), per_image))
    draw += has_own[:, None] & (draw >= position[:, None])  # skip the own identity: uniform over the others
    other = usable[draw]
    arrays = {"embeddings": embeddings, "rows": rows, "other": other, "sums": sums, "norm": norm}
    out = list(shards.current().imap(_impostor_block, shards.blocks(len(rows), chunk), arrays))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _impostor_block(lo: int, hi: int, a: dict) -> np.ndarray:
    x = _unit(a["embeddings"][np.asarray(a["rows"][lo:hi])])
    finite = np.isfinite(x).all(axis=1)
    o = np.asarray(a["other"][lo:hi])[finite]
    cos = np.einsum("nd,nkd->nk", x[finite], np.asarray(a["sums"][o]) / np.asarray(a["norm"][o])[..., None])
    return cos_to_degrees(cos).astype(np.float32).ravel()
