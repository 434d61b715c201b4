"""Tell a run directory, a purify or overlap output directory and a pipeline working directory apart; render the right report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cleanface.errors import DataError

KINDS = ("purify", "overlap", "training", "pipeline")


def detect_report_kind(path: str | os.PathLike) -> str:
    """``"purify"`` (summary.json + decisions.csv), ``"overlap"`` (summary.json + identities.csv + images.csv),
    ``"training"`` (config.json) or ``"pipeline"`` (stage folders with stage.json)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; expected a run directory, a purify output directory or a pipeline working directory")
    if (path / "summary.json").is_file() and (path / "decisions.csv").is_file():
        return "purify"
    if (path / "summary.json").is_file() and (path / "identities.csv").is_file() and (path / "images.csv").is_file():
        return "overlap"
    if (path / "config.json").is_file():
        return "training"
    if any((child / "stage.json").is_file() for child in path.iterdir() if child.is_dir()):
        return "pipeline"
    raise DataError(
        f"{path} holds no report inputs: expected summary.json + decisions.csv (purify), summary.json + identities.csv "
        "+ images.csv (overlap), config.json (training run) "
        "or stage folders with stage.json (pipeline)"
    )


def pipeline_stages(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished stages of a pipeline working directory, oldest first, as ``{"name", "kind", **outputs}``.

    Report stages are left out. Outputs recorded relative to the working directory
    (``./...``) are made absolute.
    """
    workdir = Path(workdir)
    found = []
    for child in sorted(workdir.iterdir()):
        record_path = child / "stage.json"
        if not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("status") != "complete" or record.get("kind") == "report":
            continue
        outputs = {k: str(workdir / v[2:]) if isinstance(v, str) and v.startswith("./") else v for k, v in (record.get("outputs") or {}).items()}
        marker = child / "COMPLETE"
        when = (marker if marker.is_file() else record_path).stat().st_mtime
        found.append((when, child.name, {"name": child.name, "kind": record.get("kind"), **outputs}))
    return [stage for _, _, stage in sorted(found, key=lambda item: (item[0], item[1]))]


def render_report(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the report that fits ``path`` (see :func:`detect_report_kind`); keyword arguments go to the purify or overlap report."""
    from cleanface.report.overlap import render_overlap_report
    from cleanface.report.pipeline import render_pipeline_report
    from cleanface.report.purify import render_purify_report
    from cleanface.report.training import render_training_report

    kind = detect_report_kind(path)
    if kind == "purify":
        return render_purify_report(path, **kwargs)
    if kind == "overlap":
        return render_overlap_report(path, **kwargs)
    if kind == "training":
        return render_training_report(path)
    return render_pipeline_report(path, pipeline_stages(path))
