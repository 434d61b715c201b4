"""Summary statistics of a dataset index: sizes, images per identity, what was skipped."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cleanface.data.index import DatasetIndex

# (label, lowest count, highest count inclusive); None = no upper bound
HISTOGRAM_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3-4", 3, 4),
    ("5-9", 5, 9),
    ("10-19", 10, 19),
    ("20-49", 20, 49),
    ("50-99", 50, 99),
    ("100+", 100, None),
)


def images_per_identity_histogram(counts: np.ndarray) -> dict[str, int]:
    """Number of identities per bin of image count, for ``counts`` of shape (C,); empty identities are not counted."""
    counts = np.asarray(counts)
    out = {}
    for label, low, high in HISTOGRAM_BINS:
        hit = counts >= low if high is None else (counts >= low) & (counts <= high)
        out[label] = int(hit.sum())
    return out


def dataset_info(index: DatasetIndex) -> dict[str, Any]:
    """Describe ``index`` as a JSON-ready dict.

    Returns
    -------
    dict
        ``kind``, ``root``, ``identities``, ``images``, ``empty_identities``,
        ``images_per_identity`` (``min``, ``median``, ``mean``, ``max`` over identities
        with at least one image), ``histogram`` (bins 1, 2, 3-4, 5-9, 10-19, 20-49,
        50-99, 100+ -> number of identities), ``bad_files`` (count), ``bad_reasons``
        (reason -> count) and ``bad_list`` (``[{"location", "reason"}, ...]``).
    """
    counts = index.counts()
    nonempty = counts[counts > 0]
    if len(nonempty):
        per = {
            "min": int(nonempty.min()),
            "median": float(np.median(nonempty)),
            "mean": round(float(nonempty.mean()), 3),
            "max": int(nonempty.max()),
        }
    else:
        per = {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    reasons = Counter(_reason_kind(b.reason) for b in index.bad_files)
    return {
        "kind": index.kind,
        "root": index.root,
        "identities": int(index.num_identities),
        "images": int(len(index)),
        "empty_identities": int((counts == 0).sum()),
        "images_per_identity": per,
        "histogram": images_per_identity_histogram(nonempty),
        "bad_files": len(index.bad_files),
        "bad_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "bad_list": [{"location": b.location, "reason": b.reason} for b in index.bad_files],
    }


def _reason_kind(reason: str) -> str:
    """The reason without its per-file details (text after ``(`` or ``;``), for counting."""
    for sep in (" (", ";"):
        reason = reason.split(sep, 1)[0]
    return reason.strip()
