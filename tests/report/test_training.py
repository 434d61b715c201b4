"""The training report of a run directory."""

from __future__ import annotations

import json

import pytest

from cleanface.errors import DataError
from cleanface.report.training import read_metrics, render_training_report

from .fixtures import broken_links, parse_page


def test_training_report_shows_curves_verification_and_configuration(run_dir):
    index = render_training_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    html = index.read_text()
    text = " ".join(parse_page(index).text)
    assert html.count("<svg") == 5  # loss, accuracy, learning rate, images/s, ROC
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert f"{100 * evaluation['accuracy']:.2f}% \u00b1 {100 * evaluation['accuracy_std']:.2f}%" in text
    assert f"{100 * evaluation['tar_at_far']['1e-3']:.2f}%" in text
    assert f"{evaluation['auc']:.4f}" in text
    assert "head_kwargs.margin" in text and "optimizer.lr" in text  # nested settings flattened
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{last['loss']:.4f}" in text
    assert "total report size" in text
    assert broken_links(index.parent) == []
    assert "http://" not in html and "https://" not in html


def test_training_report_without_eval_or_metrics(run_dir):
    (run_dir / "eval.json").unlink()
    (run_dir / "metrics.jsonl").unlink()
    html = render_training_report(run_dir).read_text()
    assert "<svg" not in html
    assert "No eval.json" in html and "No metrics.jsonl" in html


def test_truncated_last_metrics_line_is_skipped_but_a_bad_middle_line_is_an_error(run_dir):
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines) + '\n{"step": 99')
    assert len(read_metrics(path)["step"]) == len(lines)
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(DataError, match="line 2"):
        read_metrics(path)


def test_missing_or_broken_config_is_a_one_line_error(tmp_path, run_dir):
    with pytest.raises(DataError, match="does not exist"):
        render_training_report(tmp_path / "nowhere")
    (run_dir / "config.json").write_text("{")
    with pytest.raises(DataError, match="config.json is not valid JSON"):
        render_training_report(run_dir)


def test_rerender_replaces_the_report(run_dir):
    render_training_report(run_dir)
    (run_dir / "eval.json").unlink()
    html = render_training_report(run_dir).read_text()
    assert "No eval.json" in html
    assert not any(p.name.startswith(".report") for p in run_dir.iterdir())
