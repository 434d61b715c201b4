"""The training report of a run directory: curves, verification results, configuration.

Inputs (see docs/ARCHITECTURE.md, "Run directory"): ``config.json`` (required),
``metrics.jsonl`` (one JSON object per logged step with ``step``, ``epoch``, ``loss``,
``acc``, ``lr``, ``images_per_s``, ``elapsed_s``), ``eval.json`` (optional verification
results), ``identities.txt`` (optional). Output: ``RUN/report/index.html``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._json import read_json  # noqa: F401  (re-exported: the reports read their JSON with it)
from cleanface.errors import DataError
from cleanface.report import svg
from cleanface.report._pages import build_report, format_number
from cleanface.report._pages import svg as safe_svg

METRIC_CHARTS = (
    ("loss", "Loss", "loss"),
    ("acc", "Training accuracy", "accuracy"),
    ("lr", "Learning rate", "learning rate"),
    ("images_per_s", "Throughput", "images / s"),
)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """The columns of ``metrics.jsonl`` as float64 arrays of shape (S,) (missing values are NaN).

    Blank lines are skipped; an unreadable line (e.g. the last one, cut by an
    interruption) is skipped too, other lines raise :class:`DataError` naming the line.
    """
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the metrics {path}: {exc.strerror or exc}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if lineno == len(lines):
                continue
            raise DataError(f"{path} line {lineno} is not a JSON object") from None
        if isinstance(row, dict):
            rows.append(row)
    keys = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        out[key] = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", "1")]`` with keys in sorted order; lists as JSON."""
    rows: list[tuple[str, str]] = []
    for key in sorted(config):
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += flatten(value, f"{name}.")
        else:
            rows.append((name, value if isinstance(value, str) else json.dumps(value)))
    return rows


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``1 h 02 min 05 s``."""
    if seconds is None or not np.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def training_charts(metrics: dict[str, np.ndarray]) -> list[str]:
    """One SVG line chart per logged metric of :data:`METRIC_CHARTS` over the step."""
    step = metrics.get("step")
    if step is None:
        return []
    charts = []
    for key, title, label in METRIC_CHARTS:
        if key in metrics and np.isfinite(metrics[key]).any():
            charts.append(svg.line_chart({label: (step, metrics[key])}, title=title, x_label="step", y_label=label, width=560, height=240))
    return charts


def verification_section(result: dict[str, Any]) -> dict[str, Any]:
    """Rows and the ROC chart of an ``eval.json`` object (keys as in the architecture page)."""
    rows = [("pairs", result.get("pairs", "-")), ("pairs evaluated", format_number(result.get("num_pairs")))]
    acc, std = result.get("accuracy"), result.get("accuracy_std")
    if acc is not None:
        rows.append(("accuracy", f"{100 * acc:.2f}%" + (f" \u00b1 {100 * std:.2f}%" if std is not None else "")))
    if result.get("threshold") is not None:
        rows.append(("threshold (cosine)", f"{result['threshold']:.4f}"))
    for far, tar in sorted((result.get("tar_at_far") or {}).items(), key=lambda kv: -float(kv[0])):
        rows.append((f"TAR @ FAR={far}", f"{100 * tar:.2f}%" if tar is not None else "-"))
    if result.get("auc") is not None:
        rows.append(("AUC", f"{result['auc']:.4f}"))
    roc = result.get("roc") or {}
    chart = None
    if roc.get("far") and roc.get("tar") and len(roc["far"]) == len(roc["tar"]):
        chart = svg.roc_curve(roc["far"], roc["tar"], auc=result.get("auc"))
    return {"rows": rows, "roc": chart}


def render_training_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report/index.html`` from the run's files.

    Parameters
    ----------
    run_dir : path-like
        A run directory holding at least ``config.json``.

    Returns
    -------
    Path
        The written ``index.html``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    config = read_json(run_dir / "config.json", "run configuration")
    metrics_path = run_dir / "metrics.jsonl"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else {}
    eval_path = run_dir / "eval.json"
    verification = verification_section(read_json(eval_path, "verification results")) if eval_path.is_file() else None
    names_path = run_dir / "identities.txt"
    identities = None
    if names_path.is_file():
        identities = sum(1 for line in names_path.read_text(encoding="utf-8", errors="replace").splitlines() if line)

    last = {k: float(v[np.isfinite(v)][-1]) for k, v in metrics.items() if np.isfinite(v).any()}
    overview = [
        ("backbone", config.get("backbone", "-")),
        ("head", config.get("head", "-")),
        ("identities", format_number(identities if identities is not None else config.get("num_classes"))),
        ("device", config.get("device", "-")),
        ("steps logged", format_number(len(metrics.get("step", [])))),
        ("last step", format_number(int(last["step"])) if "step" in last else "-"),
        ("epochs", format_number(last["epoch"]) if "epoch" in last else "-"),
        ("training time", format_duration(last.get("elapsed_s"))),
        ("final loss", f"{last['loss']:.4f}" if "loss" in last else "-"),
        ("final training accuracy", f"{100 * last['acc']:.2f}%" if "acc" in last else "-"),
    ]
    if "images_per_s" in metrics and np.isfinite(metrics["images_per_s"]).any():
        overview.append(("median images / s", f"{float(np.nanmedian(metrics['images_per_s'])):.1f}"))
    complete = (run_dir / "COMPLETE").is_file()
    with build_report(run_dir / "report") as writer:
        writer.finish(
            "training.html", title=f"Training run {run_dir.name}", run=str(run_dir), complete=complete, overview=overview,
            charts=[safe_svg(c) for c in training_charts(metrics)], verification=verification and {
                "rows": verification["rows"], "roc": safe_svg(verification["roc"]) if verification["roc"] else None},
            config_rows=flatten(config),
        )
    return run_dir / "report" / "index.html"

