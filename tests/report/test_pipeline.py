"""The pipeline report and the detection of what a directory holds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cleanface.errors import DataError
from cleanface.report.detect import detect_report_kind, pipeline_stages, render_report
from cleanface.report.pipeline import render_pipeline_report
from cleanface.report.purify import render_purify_report
from cleanface.report.training import render_training_report

from .fixtures import broken_links, make_purify_dir, make_run_dir, parse_page


def _stage(workdir: Path, name: str, kind: str, outputs: dict) -> None:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    stored = {k: "./" + str(Path(v).relative_to(workdir)) if isinstance(v, str) and v.startswith(str(workdir)) else v for k, v in outputs.items()}
    (folder / "stage.json").write_text(json.dumps({"kind": kind, "status": "complete", "outputs": stored}))
    (folder / "COMPLETE").write_text("{}")
    stamp = time.time() + len(list(workdir.iterdir()))
    os.utime(folder / "COMPLETE", (stamp, stamp))


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    noisy_run = make_run_dir(work / "train-noisy" / "run")
    render_training_report(noisy_run)
    clean = make_purify_dir(work / "purify")
    render_purify_report(clean, placeholder_thumbs=True)
    final_run = make_run_dir(work / "train-final" / "run")
    (final_run / "eval.json").write_text(json.dumps({"accuracy": 0.96}))
    render_training_report(final_run)
    results = {"noisy": {"accuracy": 0.9125}, "purified": {"accuracy": 0.9542}, "clean": {"accuracy": 0.961}}
    (work / "evaluate").mkdir()
    (work / "evaluate" / "evaluate.json").write_text(json.dumps(results))
    _stage(work, "train-noisy", "train-subcenter", {"run": str(noisy_run), "report": str(noisy_run / "report" / "index.html")})
    _stage(work, "purify", "purify", {"summary": str(clean / "summary.json"), "report": str(clean / "report" / "index.html"), "data": str(clean / "data")})
    _stage(work, "train-final", "train-final", {"run": str(final_run), "report": str(final_run / "report" / "index.html")})
    _stage(work, "evaluate", "evaluate", {"results": str(work / "evaluate" / "evaluate.json"), "noisy_accuracy": 0.9125})
    return work


def test_pipeline_report_links_stage_reports_with_before_after_numbers(workdir):
    stages = pipeline_stages(workdir)
    assert [s["name"] for s in stages] == ["train-noisy", "purify", "train-final", "evaluate"]
    index = render_pipeline_report(workdir, stages)
    assert index == workdir / "report" / "index.html"
    text = " ".join(" ".join(parse_page(index).text).split())
    summary = json.loads((workdir / "purify" / "clean" / "summary.json").read_text())
    assert f"images {summary['images_before']} {summary['images_after']}" in text
    assert f"identities {summary['identities_before']} {summary['identities_after']}" in text
    assert "0.750 / 0.857 / 0.800" in text
    assert "91.25% 95.42%" in text and "96.10%" in text
    links = parse_page(index).links
    assert sum(link.endswith("report/index.html") for link in links) == 3
    assert broken_links(workdir / "report") == []
    assert "http://" not in index.read_text()


def test_final_accuracy_falls_back_to_the_runs(workdir):
    stages = [s for s in pipeline_stages(workdir) if s["name"] != "evaluate"]
    text = " ".join(" ".join(parse_page(render_pipeline_report(workdir, stages)).text).split())
    assert "93.17% 96.00%" in text  # eval.json of the sub-center run, then of the final run


def test_detection_and_render_report(workdir):
    assert detect_report_kind(workdir) == "pipeline"
    assert detect_report_kind(workdir / "purify" / "clean") == "purify"
    assert detect_report_kind(workdir / "train-final" / "run") == "training"
    assert render_report(workdir) == workdir / "report" / "index.html"
    with pytest.raises(DataError, match="holds no report inputs"):
        detect_report_kind(workdir / "evaluate")


def test_report_of_a_missing_workdir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        render_pipeline_report(tmp_path / "none", [])
