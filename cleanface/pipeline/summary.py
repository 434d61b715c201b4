"""The before/after numbers of a finished pipeline, read back from the stage outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanface.pipeline.spec import PipelineSpec


@dataclass
class PipelineSummary:
    """Rows of (measure, before or noisy, after or purified), plus the raw numbers."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    report: str | None = None


def _read_json(path: Any) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return {}


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def pipeline_summary(spec: PipelineSpec, outputs: dict[str, dict[str, Any]]) -> PipelineSummary:
    """Gather purify counts, noise-flag quality and verification accuracies from stage outputs."""
    summary = PipelineSummary()
    for stage in spec.stages:
        out = outputs.get(stage.name)
        if not out:
            continue
        if stage.kind == "purify":
            purify = _read_json(out.get("summary"))
            summary.numbers["purify"] = purify
            summary.rows.append(("images", _fmt(purify.get("images_before")), _fmt(purify.get("images_after"))))
            summary.rows.append(("identities", _fmt(purify.get("identities_before")), _fmt(purify.get("identities_after"))))
            overall = (purify.get("truth") or {}).get("overall")
            if overall:
                summary.rows.append(
                    ("noise flagged: precision / recall / F1", "", " / ".join(_fmt(overall.get(k)) for k in ("precision", "recall", "f1")))
                )
        elif stage.kind == "evaluate":
            results = _read_json(out.get("results"))
            summary.numbers["evaluate"] = results
            noisy, purified = results.get("noisy", {}), results.get("purified", {})
            summary.rows.append(("verification accuracy (held-out)", _fmt(noisy.get("accuracy")), _fmt(purified.get("accuracy"))))
            if "clean" in results:
                summary.rows.append(("verification accuracy, truly clean data", "", _fmt(results["clean"].get("accuracy"))))
        elif stage.kind == "report":
            summary.report = out.get("report")
    return summary
