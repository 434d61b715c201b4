"""``decisions.csv`` as compact arrays, per-identity statistics and the noise-type join.

Notation: N images (rows of ``decisions.csv``), C input identities (``old_identity``).
The columns read are those of the architecture page: ``index, location, old_identity,
new_identity, action, reason, angle, nearest_subcenter, dominant_subcenter`` (others
are ignored); the optional columns ``noise_type``, ``noise_score`` and ``loo_angle`` are
used when present (files written before the calibrated drop rule lack the last two).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cleanface.errors import DataError

ACTIONS = ("keep", "drop", "relabel", "merge", "dedup", "new-identity")
ACTION_LABELS = {"keep": "kept", "drop": "dropped", "relabel": "relabelled", "merge": "merged", "dedup": "dedup", "new-identity": "new identity"}
REMOVED = ("drop", "dedup")  # actions that take an image out of the cleaned set
REQUIRED = ("index", "location", "old_identity", "new_identity", "action", "angle", "nearest_subcenter", "dominant_subcenter")
SCORES = ("noise_score", "loo_angle")  # optional float columns; NaN arrays when absent


@dataclass
class DecisionTable:
    """The rows of ``decisions.csv`` as arrays.

    Attributes
    ----------
    index : ndarray (N,), int64
        Sample index in the input dataset.
    location : list of str, length N
    identity : ndarray (N,), int64
        Code of ``old_identity`` into ``names`` (codes in order of first appearance).
    names : list of str, length C
    new_identity : ndarray (N,), int64
        Code into ``new_names`` (-1 for an empty cell).
    new_names : list of str
    action : ndarray (N,), int8
        Code into :data:`ACTIONS`.
    reason : ndarray (N,), int64
        Code into ``reasons``.
    reasons : list of str
    angle : ndarray (N,), float32
        Degrees to the identity's dominant sub-center; NaN when empty.
    nearest, dominant : ndarray (N,), int64
        Sub-center indices; -1 when empty.
    noise_type : ndarray (N,) of str or None
    noise_score : ndarray (N,), float32
        Calibrated probability (0..1) that the label is wrong; NaN when empty or the column is absent.
    loo_angle : ndarray (N,), float32
        Degrees to the mean of the other images of the identity; NaN when empty or absent.
    """

    index: np.ndarray
    location: list[str]
    identity: np.ndarray
    names: list[str]
    new_identity: np.ndarray
    new_names: list[str]
    action: np.ndarray
    reason: np.ndarray
    reasons: list[str]
    angle: np.ndarray
    nearest: np.ndarray
    dominant: np.ndarray
    noise_type: np.ndarray | None = None
    noise_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    loo_angle: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    row_of_index: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def row(self, sample_index: int) -> int | None:
        """The row holding dataset sample ``sample_index`` (None when absent)."""
        if not self.row_of_index:
            self.row_of_index = {int(v): r for r, v in enumerate(self.index.tolist())}
        return self.row_of_index.get(int(sample_index))


def _int(text: str) -> int:
    return int(text) if text else -1


def _optional_float(row: list[str], column: int | None) -> float:
    """The float in ``row[column]``; NaN for an empty cell or an absent column (``column`` None)."""
    return float(row[column]) if column is not None and row[column] else np.nan


def read_decisions(path: str | os.PathLike) -> DecisionTable:
    """Read ``decisions.csv`` into a :class:`DecisionTable`; errors name the file and line."""
    path = Path(path)
    try:
        handle = open(path, "r", encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; expected a header with {', '.join(REQUIRED)}")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; is it a purify decisions.csv?")
        col = {name: header.index(name) for name in header}
        c_idx, c_loc, c_old, c_new, c_act, c_ang, c_near, c_dom = (col[c] for c in REQUIRED)
        c_reason, c_noise = col.get("reason"), col.get("noise_type")
        c_scores = [col.get(c) for c in SCORES]
        names: dict[str, int] = {}
        new_names: dict[str, int] = {"": -1}
        reasons: dict[str, int] = {}
        action_code = {a: i for i, a in enumerate(ACTIONS)}
        index, location, identity, new_identity, action, reason, angle, nearest, dominant, noise = ([] for _ in range(10))
        scores: list[list[float]] = [[] for _ in SCORES]
        width = len(header)
        for lineno, row in enumerate(reader, start=2):
            if len(row) < width:
                if not row:
                    continue
                raise DataError(f"{path} line {lineno}: expected {width} fields, got {len(row)}")
            if row[c_idx] == "":  # an input entry that indexing set aside: listed for the audit, not a sample
                continue
            try:
                index.append(int(row[c_idx]))
                action.append(action_code[row[c_act]])
                angle.append(float(row[c_ang]) if row[c_ang] else np.nan)
                nearest.append(_int(row[c_near]))
                dominant.append(_int(row[c_dom]))
                for values, c in zip(scores, c_scores):
                    values.append(_optional_float(row, c))
            except (ValueError, KeyError):
                raise DataError(f"{path} line {lineno}: unreadable index, action, angle, sub-center, noise score or "
                                f"leave-one-out angle ({','.join(row[:8])[:120]!r})") from None
            location.append(row[c_loc])
            identity.append(names.setdefault(row[c_old], len(names)))
            new_identity.append(new_names.setdefault(row[c_new], len(new_names) - 1))
            reason.append(reasons.setdefault(row[c_reason], len(reasons)) if c_reason is not None else 0)
            if c_noise is not None:
                noise.append(row[c_noise])
    return DecisionTable(
        index=np.array(index, dtype=np.int64), location=location, identity=np.array(identity, dtype=np.int64), names=list(names),
        new_identity=np.array(new_identity, dtype=np.int64), new_names=[n for n in new_names if n],
        action=np.array(action, dtype=np.int8), reason=np.array(reason, dtype=np.int64), reasons=list(reasons) or [""],
        angle=np.array(angle, dtype=np.float32), nearest=np.array(nearest, dtype=np.int64), dominant=np.array(dominant, dtype=np.int64),
        noise_type=np.array(noise, dtype=str) if c_noise is not None else None,
        noise_score=np.array(scores[0], dtype=np.float32), loo_angle=np.array(scores[1], dtype=np.float32),
    )


@dataclass
class IdentityStats:
    """Per input identity (C,): images, removed images and their share, angle spread and median.

    ``spread`` is the 90th minus the 10th percentile of the finite angles (degrees,
    linear interpolation; NaN without finite angles); ``subcenters`` counts distinct
    nearest sub-centers.
    """

    size: np.ndarray
    removed: np.ndarray
    removed_share: np.ndarray
    spread: np.ndarray
    median: np.ndarray
    subcenters: np.ndarray


def _group_quantile(sorted_values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` in [0, 1] of each group of an array sorted by (group, value)."""
    out = np.full(len(starts), np.nan)
    ok = counts > 0
    pos = (counts[ok] - 1) * q
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts[ok] - 1)
    frac = pos - lo
    base = starts[ok]
    out[ok] = sorted_values[base + lo] * (1 - frac) + sorted_values[base + hi] * frac
    return out


def identity_stats(table: DecisionTable) -> IdentityStats:
    """Statistics of every input identity of ``table`` (see :class:`IdentityStats`)."""
    c = len(table.names)
    ident = table.identity
    size = np.bincount(ident, minlength=c)
    removed_mask = np.isin(table.action, [ACTIONS.index(a) for a in REMOVED])
    removed = np.bincount(ident, weights=removed_mask, minlength=c).astype(np.int64)
    finite = np.isfinite(table.angle)
    g, v = ident[finite], table.angle[finite].astype(np.float64)
    order = np.lexsort((v, g))
    g, v = g[order], v[order]
    counts = np.bincount(g, minlength=c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    p10, p50, p90 = (_group_quantile(v, starts, counts, q) for q in (0.1, 0.5, 0.9))
    pairs = np.unique(np.stack([ident, table.nearest]), axis=1) if len(ident) else np.zeros((2, 0), np.int64)
    pairs = pairs[:, pairs[1] >= 0]
    subcenters = np.bincount(pairs[0], minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(size > 0, removed / np.maximum(size, 1), 0.0)
    return IdentityStats(size=size, removed=removed, removed_share=share, spread=p90 - p10, median=p50, subcenters=subcenters)


def join_noise_types(table: DecisionTable, truth_path: str | os.PathLike, data_root: str | os.PathLike | None) -> np.ndarray | None:
    """The noise type of every row from a ``noise_truth.csv`` (paths relative to the dataset root).

    A row's location is matched by its path relative to ``data_root`` and, failing that,
    by its last path components (``identity/file``). Returns ``(N,)`` strings, or None
    when the file cannot be read or fewer than half of the rows match.
    """
    path = Path(truth_path)
    if path.is_dir():
        path = path / "noise_truth.csv"
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None) or []
    if "path" not in header or "noise_type" not in header:
        return None
    p_col, t_col = header.index("path"), header.index("noise_type")
    by_path: dict[str, str] = {}
    depth = 1
    for row in reader:
        if len(row) > max(p_col, t_col):
            rel = row[p_col].replace("\\", "/")
            by_path[rel] = row[t_col]
            depth = max(depth, rel.count("/") + 1)
    root = str(Path(data_root)) + os.sep if data_root else None
    out = np.empty(len(table), dtype=object)
    found = 0
    for r, location in enumerate(table.location):
        kind = None
        if root and location.startswith(root):
            kind = by_path.get(location[len(root):].replace(os.sep, "/"))
        if kind is None:
            kind = by_path.get("/".join(Path(location).parts[-depth:]))
        out[r] = kind or "unknown"
        found += kind is not None
    if found * 2 < len(table):
        return None
    return out.astype(str)


def group_order(table: DecisionTable) -> np.ndarray:
    """Row order by identity, then sub-center group (the dominant one first, images without one last), then angle."""
    dominant_group = (table.nearest >= 0) & (table.nearest == table.dominant)
    rank = np.where(dominant_group, -1, np.where(table.nearest >= 0, table.nearest, np.iinfo(np.int64).max))
    angle = np.where(np.isfinite(table.angle), table.angle, np.inf)
    return np.lexsort((table.index, angle, rank, table.identity))


def spread_evenly(count: int, keep: int) -> np.ndarray:
    """``keep`` positions out of ``range(count)``, evenly spread and including both ends."""
    if keep >= count:
        return np.arange(count)
    if keep <= 0:
        return np.zeros(0, np.int64)
    if keep == 1:
        return np.zeros(1, np.int64)
    return np.unique(np.round(np.linspace(0, count - 1, keep)).astype(np.int64))


def share_out(sizes: Sequence[int], cap: int) -> list[int]:
    """How many of each group to show when at most ``cap`` fit: small groups whole, the rest share the remainder equally."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) <= cap:
        return sizes
    shown = [0] * len(sizes)
    left = cap
    pending = sorted(range(len(sizes)), key=lambda i: sizes[i])
    while pending:
        fair = left // len(pending)
        i = pending[0]
        if sizes[i] <= fair:
            shown[i] = sizes[i]
            left -= sizes[i]
            pending.pop(0)
            continue
        for k, j in enumerate(pending):
            shown[j] = fair + (1 if k < left - fair * len(pending) else 0)
        break
    return shown
