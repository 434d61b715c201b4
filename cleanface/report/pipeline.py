"""The pipeline report: one page linking every stage's report, with the before/after numbers.

Each stage is a dict ``{"name": str, "kind": str (optional), **outputs}`` where the
outputs are those the pipeline stages record (paths as strings): ``report`` (the
stage's ``index.html``), ``run`` (a run directory), ``summary`` (a purify
``summary.json``), ``results`` (the evaluate stage's JSON: ``{role: eval.json object}``
with roles ``noisy``, ``purified``, ``clean``), ``data``, ``truth``. A missing kind is
read from ``<workdir>/<name>/stage.json`` or guessed from the outputs. Output:
``<workdir>/report/index.html``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from cleanface.errors import ConfigError, DataError
from cleanface.report._pages import build_report, format_number

ROLE_LABELS = {"noisy": "model trained on the noisy data", "purified": "model trained on the purified data", "clean": "model trained on truly clean data"}


def _read(path: Any) -> dict[str, Any]:
    if not path:
        return {}
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def stage_kind(workdir: Path, stage: dict[str, Any]) -> str:
    """The stage's kind: given, recorded in its ``stage.json``, or guessed from its outputs."""
    if stage.get("kind"):
        return str(stage["kind"])
    recorded = _read(workdir / str(stage.get("name", "")) / "stage.json").get("kind")
    if recorded:
        return str(recorded)
    if "summary" in stage:
        return "purify"
    if "results" in stage:
        return "evaluate"
    if "run" in stage:
        return "train"
    if "truth" in stage:
        return "noise"
    return "data" if "data" in stage else "other"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def _link(report_dir: Path, target: Any) -> str | None:
    if not target or not Path(target).is_file():
        return None
    return quote(os.path.relpath(os.path.abspath(target), os.path.abspath(report_dir)).replace(os.sep, "/"))


def _stage_row(workdir: Path, report_dir: Path, stage: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The table row of one stage and the numbers it contributes to the before/after table."""
    kind = stage_kind(workdir, stage)
    facts: list[str] = []
    numbers: dict[str, Any] = {}
    if kind == "purify":
        summary = _read(stage.get("summary"))
        numbers["purify"] = summary
        facts.append(f"images {format_number(summary.get('images_before'))} \u2192 {format_number(summary.get('images_after'))}")
        facts.append(f"identities {format_number(summary.get('identities_before'))} \u2192 {format_number(summary.get('identities_after'))}")
        overall = (summary.get("truth") or {}).get("overall")
        if overall:
            facts.append("flags P/R/F1 " + " / ".join(f"{overall.get(k, 0):.3f}" for k in ("precision", "recall", "f1")))
    elif kind == "evaluate":
        results = _read(stage.get("results"))
        numbers["evaluate"] = results
        for role, result in results.items():
            if isinstance(result, dict):
                facts.append(f"{role}: {_pct(result.get('accuracy'))}")
    elif "run" in stage:
        run = Path(str(stage["run"]))
        result = _read(run / "eval.json")
        numbers.setdefault("runs", {})[stage.get("name")] = {"kind": kind, "accuracy": result.get("accuracy")}
        if result:
            facts.append(f"verification accuracy {_pct(result.get('accuracy'))}")
        config = _read(run / "config.json")
        if config:
            facts.append(f"{config.get('backbone', '?')} + {config.get('head', '?')}")
    if "data" in stage and kind not in ("purify",):
        facts.append(f"data: {Path(str(stage['data'])).name}")
    row = {"name": stage.get("name", "?"), "kind": kind, "facts": facts, "report": _link(report_dir, stage.get("report"))}
    return row, numbers


def render_pipeline_report(workdir: str | os.PathLike, stages: Sequence[dict[str, Any]]) -> Path:
    """Write ``workdir/report/index.html`` linking the stage reports, with before/after numbers.

    Parameters
    ----------
    workdir : path-like
        The pipeline's working directory.
    stages : sequence of dict
        The finished stages in order (see the module docstring).

    Returns
    -------
    Path
        The written ``index.html``.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise DataError(f"pipeline working directory {workdir} does not exist")
    if not all(isinstance(s, dict) for s in stages):
        raise ConfigError("render_pipeline_report: every stage must be a dict with at least a 'name'")
    report_dir = workdir / "report"
    rows, numbers = [], {"runs": {}}
    for stage in stages:
        row, found = _stage_row(workdir, report_dir, stage)
        rows.append(row)
        runs = found.pop("runs", {})
        numbers["runs"].update(runs)
        numbers.update(found)
    headline = _headline(numbers, stages)
    with build_report(report_dir) as writer:
        writer.finish("pipeline.html", title=f"Pipeline {workdir.resolve().name}", workdir=str(workdir), rows=rows, headline=headline)
    return report_dir / "index.html"


def _headline(numbers: dict[str, Any], stages: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(measure, before or noisy, after or purified) rows."""
    rows: list[tuple[str, str, str]] = []
    purify = numbers.get("purify")
    if purify:
        rows.append(("images", format_number(purify.get("images_before")), format_number(purify.get("images_after"))))
        rows.append(("identities", format_number(purify.get("identities_before")), format_number(purify.get("identities_after"))))
        overall = (purify.get("truth") or {}).get("overall")
        if overall:
            rows.append(("noise flags: precision / recall / F1", "", " / ".join(f"{overall.get(k, 0):.3f}" for k in ("precision", "recall", "f1"))))
    results = numbers.get("evaluate") or {}
    noisy = (results.get("noisy") or {}).get("accuracy")
    final = (results.get("purified") or {}).get("accuracy")
    if noisy is None or final is None:  # fall back to the accuracies the stages recorded, then to the runs' eval.json
        for stage in stages:
            noisy = stage.get("noisy_accuracy", noisy) if noisy is None else noisy
            final = stage.get("purified_accuracy", final) if final is None else final
        runs = numbers.get("runs") or {}
        subcenter = [r["accuracy"] for r in runs.values() if r["kind"] == "train-subcenter" and r.get("accuracy") is not None]
        finals = [r["accuracy"] for r in runs.values() if r["kind"] == "train-final" and r.get("accuracy") is not None]
        noisy = noisy if noisy is not None else (subcenter[0] if subcenter else None)
        final = final if final is not None else (finals[-1] if finals else None)
    if noisy is not None or final is not None:
        rows.append(("verification accuracy (noisy-data model / final model)", _pct(noisy), _pct(final)))
    clean = (results.get("clean") or {}).get("accuracy")
    if clean is not None:
        rows.append(("verification accuracy, model trained on truly clean data", "", _pct(clean)))
    return rows
