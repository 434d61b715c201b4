"""The overlap report: which identities of dataset A are in dataset B, face beside face, and the images both hold.

Inputs (see docs/ARCHITECTURE.md, "Overlap output directory"): ``summary.json``,
``identities.csv`` and ``images.csv`` of an overlap output directory; the two datasets
themselves (by the paths in ``summary.json``'s ``inputs``, or given), for the faces of
each identity. A dataset that cannot be opened any more only leaves its identities'
faces out; the image pairs are read by their locations. Output: ``OUT/report/``::

    index.html       summary cards, the calibration, the shared identities (best score
                     first, at most ``max_identities``), the shared images (at most ``max_pairs``)
    thumbs/, images/ thumbnails; full-size copies of RecordIO images

Thumbnails are those of the purify report (:class:`cleanface.report.thumbs.ThumbWriter`);
the images of B are keyed after those of A (``images_a`` rounded up to a thousand, plus
their index), so the two datasets never share a thumbnail file.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cleanface.errors import DataError
from cleanface.report._pages import build_report
from cleanface.report.decisions_table import spread_evenly
from cleanface.report.thumbs import Thumb, ThumbWriter
from cleanface.report.training import read_json

MAX_IDENTITIES = 200
MAX_PAIRS = 200
FACES_PER_IDENTITY = 4
IDENTITY_COLUMNS = ("identity_a", "images_a", "identity_b", "images_b", "similarity", "score", "shared")
IMAGE_COLUMNS = ("index_a", "location_a", "identity_a", "index_b", "location_b", "identity_b", "cos")


def render_overlap_report(
    out_dir: str | os.PathLike,
    *,
    data_a: Any = None,
    data_b: Any = None,
    placeholder_thumbs: bool = False,
    max_identities: int = MAX_IDENTITIES,
    max_pairs: int = MAX_PAIRS,
    silent: bool = True,
) -> Path:
    """Write ``out_dir/report/`` for an overlap output directory.

    Parameters
    ----------
    out_dir : path-like
        An overlap output directory holding ``summary.json``, ``identities.csv`` and ``images.csv``.
    data_a, data_b : DatasetIndex or path-like, optional
        The two datasets (default: the paths recorded in ``summary.json``), for the faces of each identity.
    placeholder_thumbs : bool
        Draw grey boxes instead of images (nothing read, nothing written).
    max_identities, max_pairs : int
        Most shared identities and image pairs shown (the CSV files list all).
    silent : bool
        Unused (the page is one); accepted like the other reports' option.

    Returns
    -------
    Path
        The written ``index.html``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(f"overlap output directory {out_dir} does not exist")
    if max_identities < 1 or max_pairs < 1:
        raise DataError(f"max_identities and max_pairs must be positive, got {max_identities} and {max_pairs}")
    summary = read_json(out_dir / "summary.json", "overlap summary")
    identities = read_rows(out_dir / "identities.csv", IDENTITY_COLUMNS)
    pairs = read_rows(out_dir / "images.csv", IMAGE_COLUMNS)
    inputs = summary.get("inputs") or {}
    datasets, notes = {}, []
    for side, given in (("a", data_a), ("b", data_b)):
        datasets[side], note = _open(given if given is not None else inputs.get(f"data_{side}"), side)
        notes += [note] if note else []
    counts = summary.get("counts") or {}
    with build_report(out_dir / "report") as writer:
        thumbs = ThumbWriter(writer.stage, writer.final, data=None, placeholder=placeholder_thumbs)
        page = _OverlapPage(thumbs, datasets, offset_b=1000 * math.ceil(int(counts.get("images_a") or 0) / 1000))
        shared = [r for r in identities if r["shared"] == "true"]
        items = [page.identity_item(r) for r in shared[:max_identities]]
        pair_items = [page.pair_item(r) for r in pairs[:max_pairs]]
        writer.finish("overlap_index.html", title=f"Overlap of {_name(inputs.get('data_a'), 'A')} with {_name(inputs.get('data_b'), 'B')}",
                      out_dir=str(out_dir), inputs=inputs, counts=counts, settings=summary.get("settings") or {},
                      calibration=calibration_view(summary.get("calibration")), items=items, shared=len(shared), pairs=pair_items,
                      pair_count=len(pairs), notes=notes, thumbs_failed=thumbs.failed, elapsed=summary.get("elapsed_s"))
    return out_dir / "report" / "index.html"


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of one of the output's CSV files as dicts; a one-line :class:`DataError` when it is missing or lacks a column."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; is it the output of cleanface overlap?")
            return list(reader)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; is this an overlap output directory?") from None


def _open(data: Any, side: str) -> tuple[Any, str]:
    """The dataset of one side, opened (or as given), and a note when it cannot be."""
    if data is None:
        return None, f"dataset {side.upper()} is not recorded in summary.json: its identities are shown without faces"
    if not isinstance(data, (str, os.PathLike)):
        return data, ""
    from cleanface.data.open import open_dataset

    try:
        return open_dataset(data, silent=True), ""
    except Exception as exc:  # noqa: BLE001  (a dataset moved since: the report still renders, without its faces)
        return None, f"dataset {side.upper()} ({data}) could not be opened ({exc}): its identities are shown without faces"


def _name(path: Any, fallback: str) -> str:
    return Path(str(path)).name if path else fallback


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def calibration_view(cal: Any) -> dict[str, Any]:
    """What the page shows of the calibration: used or why not, the estimated share, and the similarity where the score reaches the cut.

    The fit works on mirrored angles (``180 - arccos(q)``), so its ``threshold`` t becomes
    the similarity ``cos(180 - t)``.
    """
    cal = cal if isinstance(cal, dict) else {}
    used = bool(cal.get("used"))
    threshold = _float(cal.get("threshold")) if used else None
    return {"used": used, "reason": None if used else cal.get("reason"),
            "rate": _float(cal.get("shared_rate", cal.get("noise_rate"))) if used else None,
            "similarity": None if threshold is None else math.cos(math.radians(180.0 - threshold)),
            "cut": _float(cal.get("cut")), "identities": cal.get("angles"), "halves": cal.get("impostors"),
            "warning": cal.get("warning") if used else None}


class _OverlapPage:
    """Faces of the identities and images of the two datasets, as :class:`Thumb` objects."""

    def __init__(self, thumbs: ThumbWriter, datasets: dict[str, Any], *, offset_b: int) -> None:
        self.thumbs, self.datasets = thumbs, datasets
        self.offset = {"a": 0, "b": offset_b}
        self.rows: dict[str, tuple[dict[str, int], np.ndarray, np.ndarray]] = {}
        for side, index in datasets.items():
            if index is not None:
                labels = np.asarray(index.labels, dtype=np.int64)
                order = np.argsort(labels, kind="stable")
                starts = np.searchsorted(labels[order], np.arange(len(index.names) + 1))
                self.rows[side] = ({name: c for c, name in enumerate(index.names)}, order, starts)

    def face(self, side: str, index: int, location: str, caption: str) -> Thumb:
        return self.thumbs.thumb(self.offset[side] + int(index), location, "keep", caption)

    def faces_of(self, side: str, name: str) -> list[Thumb]:
        """A few images of identity ``name`` of one side, spread evenly over its images."""
        if side not in self.rows:
            return []
        code, order, starts = self.rows[side][0].get(name), self.rows[side][1], self.rows[side][2]
        if code is None:
            return []
        rows = order[starts[code]:starts[code + 1]]
        index = self.datasets[side]
        return [self.face(side, int(i), index.location(int(i)), f"#{int(i)}") for i in rows[spread_evenly(len(rows), FACES_PER_IDENTITY)]]

    def identity_item(self, row: dict[str, str]) -> dict[str, Any]:
        sides = [{"label": side.upper(), "name": row[f"identity_{side}"], "size": row[f"images_{side}"],
                  "faces": self.faces_of(side, row[f"identity_{side}"])} for side in ("a", "b")]
        return {"sides": sides, "similarity": _float(row["similarity"]), "score": _float(row["score"])}

    def pair_item(self, row: dict[str, str]) -> dict[str, Any]:
        sides = [{"label": side.upper(), "name": row[f"identity_{side}"], "index": row[f"index_{side}"],
                  "face": self.face(side, int(row[f"index_{side}"]), row[f"location_{side}"], f"#{row[f'index_{side}']}")}
                 for side in ("a", "b")]
        return {"sides": sides, "cos": _float(row["cos"])}
