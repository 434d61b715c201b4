"""An earlier purify output as the reference of the next round.

In a second round the identity means of the calibrated drop rule are taken over the images
the first round kept under their own label; the images it dropped (or moved to another
identity) are scored against those means without counting in them. A model trained on
the first round's kept images has not been fitted to the images it dropped, so their
angles are those of unseen images, and a clean image dropped by mistake can come back.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from cleanface._atomic import is_complete
from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError

# actions under which an image still counts as a member of its input identity
MEMBER_ACTIONS = ("keep", "merge", "dedup")


def reference_weights(reference: str | os.PathLike, index: DatasetIndex) -> np.ndarray:
    """(N,) float32 weights for ``index`` from the ``decisions.csv`` of the purify output ``reference``.

    1 for an image the reference kept under its own identity (``keep``, ``merge``,
    ``dedup``), 0 for one it dropped, relabelled or split off. Images are matched by
    location; one clear :class:`DataError` when the reference is incomplete, or an image
    of ``index`` is not in it (the reference must come from the same dataset).
    """
    reference = Path(reference)
    path = reference / "decisions.csv"
    if not is_complete(reference) or not path.is_file():
        raise DataError(f"{reference} is not a complete purify output (no COMPLETE marker or decisions.csv); purify it first")
    member: dict[str, bool] = {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for row in csv.DictReader(handle):
            if row.get("index"):
                member[row["location"]] = row["action"] in MEMBER_ACTIONS
    weights = np.zeros(len(index), dtype=np.float32)
    for i in range(len(index)):
        location = index.location(i)
        if location not in member:
            raise DataError(f"{location} is not in the reference {path}: a reference must be a purify output of the same dataset")
        weights[i] = member[location]
    return weights
