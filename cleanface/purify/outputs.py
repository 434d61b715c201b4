"""The files of a purify output directory (see docs/ARCHITECTURE.md, "Purify output directory").

Every file here is a deterministic function of its inputs: JSON keys are sorted, floats
are rounded, the ``.npz`` is written with fixed zip timestamps, and nothing carries a
time of day (that goes to ``run_info.json`` only). A re-run therefore reproduces the
files byte for byte.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from cleanface._atomic import atomic_write, atomic_write_json
from cleanface.data.index import DatasetIndex
from cleanface.purify.decisions import ACTIONS, IN_OUTPUT, REASONS, REPORTED_DUPLICATES, Decisions
from cleanface.purify.settings import PurifySettings

DECISION_COLUMNS = (
    "index", "location", "old_identity", "new_identity", "action", "reason", "angle",
    "nearest_subcenter", "dominant_subcenter", "best_other_identity", "best_other_angle", "noise_score", "loo_angle",
)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _angle_text(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.4f}"


def _score_text(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6f}"


def decision_rows(index: DatasetIndex, decisions: Decisions) -> Iterator[list[str]]:
    """The rows of ``decisions.csv`` (without the header), one per sample in index order."""
    names, out_names = index.names, decisions.names
    labels = index.labels
    for i in range(len(index)):
        nl, bo, nearest, dom = int(decisions.new_label[i]), int(decisions.best_other[i]), int(decisions.nearest[i]), int(decisions.dominant[i])
        yield [
            str(i), index.location(i), names[int(labels[i])], out_names[nl] if nl >= 0 else "",
            ACTIONS[decisions.action[i]], REASONS[decisions.reason[i]], _angle_text(float(decisions.angle[i])),
            str(nearest) if nearest >= 0 else "", str(dom) if dom >= 0 else "",
            names[bo] if bo >= 0 else "", _angle_text(float(decisions.best_other_angle[i])),
            _score_text(float(decisions.noise_score[i])), _angle_text(float(decisions.loo_angle[i])),
        ]


UNINDEXED_REASON = "not indexed: {}"


def unindexed_rows(index: DatasetIndex) -> Iterator[list[str]]:
    """A ``drop`` row for every input entry indexing set aside (``index.bad_files``): nothing vanishes silently.

    These entries are not samples, so their ``index`` cell (and every model column) is
    empty; the reason says why indexing refused them.
    """
    blank = [""] * (len(DECISION_COLUMNS) - 6)
    for bad in index.bad_files:
        yield ["", bad.location, "", "", "drop", UNINDEXED_REASON.format(bad.reason), *blank]


def write_decisions_csv(path: str | os.PathLike, index: DatasetIndex, decisions: Decisions) -> Path:
    """Write ``decisions.csv`` (columns :data:`DECISION_COLUMNS`, UTF-8, ``\\n`` line ends) atomically."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(DECISION_COLUMNS)
        writer.writerows(decision_rows(index, decisions))
        writer.writerows(unindexed_rows(index))
        text.flush()
        text.detach()
    return path


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8 for Parquet: undecodable bytes of file names (kept as surrogates) become U+FFFD.

    ``decisions.csv`` keeps the exact bytes; Parquet strings must be UTF-8.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def write_decisions_parquet(path: str | os.PathLike, index: DatasetIndex, decisions: Decisions) -> Path | None:
    """Write ``decisions.parquet`` with the CSV's columns when pyarrow is importable; else return None."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    names = np.array([_utf8(x) for x in index.names], dtype=object)
    out_names = np.array([_utf8(x) for x in decisions.names] + [""], dtype=object)
    extra = list(unindexed_rows(index))
    n, m = len(index), len(extra)

    def more(values: Any, filler: Any, dtype: Any = object) -> np.ndarray:
        return np.concatenate([np.asarray(values, dtype=dtype), np.full(m, filler, dtype=dtype)])

    columns = {
        "index": pa.array(more(np.arange(n), 0, np.int64), mask=more(np.zeros(n, bool), True, bool)),
        "location": [_utf8(index.location(i)) for i in range(n)] + [_utf8(row[1]) for row in extra],
        "old_identity": more(names[index.labels], ""),
        "new_identity": more(out_names[decisions.new_label], ""),
        "action": more(np.array(ACTIONS, dtype=object)[decisions.action], "drop"),
        "reason": np.concatenate([np.array(REASONS, dtype=object)[decisions.reason], np.array([row[5] for row in extra], dtype=object)]),
        "angle": more(decisions.angle, np.nan, np.float32),
        "nearest_subcenter": more(decisions.nearest, -1, np.int64),
        "dominant_subcenter": more(decisions.dominant, -1, np.int64),
        "best_other_identity": more(np.append(names, "")[decisions.best_other], ""),
        "best_other_angle": more(decisions.best_other_angle, np.nan, np.float32),
        "noise_score": more(decisions.noise_score, np.nan, np.float32),
        "loo_angle": more(decisions.loo_angle, np.nan, np.float32),
    }
    table = pa.table(columns)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    with atomic_write(path, "wb") as handle:
        handle.write(buf.getvalue().to_pybytes())
    return Path(path)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` with fixed zip timestamps (byte-reproducible), atomically."""
    with atomic_write(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), buf.getvalue())
    return Path(path)


def analysis_arrays(decisions: Decisions) -> dict[str, np.ndarray]:
    """Per-sample and per-identity arrays for ``analysis.npz``.

    Per sample (N): ``angle``, ``nearest``, ``dominant`` (the identity's dominant
    sub-center), ``is_dominant`` (nearest == dominant), ``cos`` (N, K), ``finite``,
    ``action``, ``reason``, ``new_label``, ``best_other``, ``best_other_angle``,
    ``outlier_group``, ``loo_angle``, ``noise_score``, ``split_group`` (1: the group a split proposal
    moves to ``<name>#2``, 0: the rest of that identity, -1: no proposal). Per identity (C): ``dominant_subcenter`` and ``identity_*``
    statistics. Pairs: ``duplicate_pairs`` (P, 2), ``duplicate_cos`` (P,). Code tables:
    ``actions``, ``reasons``, ``names`` (output identities).
    """
    d = decisions
    arrays = {
        "angle": d.angle, "nearest": d.nearest, "dominant": d.dominant, "is_dominant": (d.nearest >= 0) & (d.nearest == d.dominant),
        "cos": d.cos, "finite": d.finite, "action": d.action, "reason": d.reason, "new_label": d.new_label,
        "best_other": d.best_other, "best_other_angle": d.best_other_angle, "outlier_group": d.outlier_group,
        "loo_angle": d.loo_angle, "noise_score": d.noise_score, "split_group": _split_group(d),
        "dominant_subcenter": d.dominant_by_identity, "duplicate_pairs": d.duplicate_pairs, "duplicate_cos": d.duplicate_cos,
        "actions": np.array(ACTIONS), "reasons": np.array(REASONS),
        "names": np.array([n.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for n in d.names]) if d.names else np.zeros(0, "<U1"),
    }
    arrays.update(d.stats.arrays())
    return arrays


def _split_group(decisions: Decisions) -> np.ndarray:
    """``decisions.split_group``, or all -1 when the decisions were made without it."""
    if len(decisions.split_group) == len(decisions.action):
        return decisions.split_group
    return np.full(len(decisions.action), -1, dtype=np.int8)


def truth_metrics(flagged: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Precision, recall and F1 of ``flagged`` (N,) against aligned noise truth (see ``align_truth``).

    Returns ``{"overall": {"precision", "recall", "f1", "flagged", "noisy", "images"},
    "per_type": {type: {"images", "flagged", "recall"}}}``; for the ``clean`` type the
    share flagged is ``false_flag_rate`` instead of ``recall``.
    """
    flagged = np.asarray(flagged, dtype=bool)
    noisy = np.asarray(truth["is_noise"], dtype=bool)
    tp = int((flagged & noisy).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else 0.0
    recall = tp / int(noisy.sum()) if noisy.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_type: dict[str, dict] = {}
    for kind in sorted(set(truth["noise_type"].tolist())):
        sel = truth["noise_type"] == kind
        share = round(float(flagged[sel].mean()), 6)
        per_type[kind] = {"images": int(sel.sum()), "flagged": int(flagged[sel].sum()), ("false_flag_rate" if kind == "clean" else "recall"): share}
    return {
        "overall": {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
                    "flagged": int(flagged.sum()), "noisy": int(noisy.sum()), "images": int(len(flagged))},
        "per_type": per_type,
    }


def build_summary(
    index: DatasetIndex, decisions: Decisions, settings: PurifySettings, *, fmt: str, truth: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """The content of ``summary.json`` (see the architecture page)."""
    d = decisions
    kept = np.isin(d.action, IN_OUTPUT)
    names = index.names
    pairs = d.duplicate_pairs[:REPORTED_DUPLICATES]
    labels = index.labels
    duplicates = [
        {"a": int(a), "b": int(b), "cos": round(float(c), 6), "a_identity": names[int(labels[a])], "b_identity": names[int(labels[b])]}
        for (a, b), c in zip(pairs, d.duplicate_cos[:REPORTED_DUPLICATES])
    ]
    summary: dict[str, Any] = {
        "images_before": int(len(index)),
        "images_after": int(kept.sum()),
        "identities_before": int(index.num_identities),
        "identities_after": int(len(np.unique(d.new_label[kept]))),
        "actions": d.action_counts(),
        "reasons": d.reason_counts(),
        "settings": settings.to_dict(),
        "threshold": settings.threshold,
        "drop_rule": settings.drop_rule,
        "calibration": d.calibration,
        "calibrated_threshold": d.calibration.get("threshold"),
        "identity_calibration": d.identity_calibration,
        "advised_threshold": d.advice.get("threshold"),
        "mixture": d.advice.get("mixture"),
        "faiss": d.faiss,
        "merges": d.merges,
        "splits": d.splits,
        "duplicates": duplicates,
        "duplicate_pairs": int(len(d.duplicate_pairs)),
        "outlier_groups": d.outlier_groups,
        "outlier_clustering": d.outlier_info,
        "non_finite": int((~d.finite).sum()),
        "bad_files": len(index.bad_files),
        "format": fmt,
        "k": int(d.cos.shape[1]),
    }
    if truth is not None:
        summary["truth"] = truth_metrics(d.action != ACTIONS.index("keep"), truth)
        summary["truth"]["angle_only"] = truth_metrics((np.nan_to_num(d.angle, nan=180.0) > settings.threshold), truth)["overall"]
    return summary


def write_summary(path: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` (sorted keys) atomically."""
    atomic_write_json(path, dict(summary))
    return Path(path)
