"""The train-subcenter, train-final, evaluate and embed commands end to end on tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from cleanface.data.synthetic import make_pairs
from cleanface_cli.main import cli

TINY = ["--input-size", "32", "--embedding-size", "32", "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--silent"]


def test_train_evaluate_embed(faces, tmp_path):
    runner = CliRunner()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    sub = runner.invoke(cli, ["train-subcenter", str(faces), "--out", str(tmp_path / "sub"), "--k", "2", *TINY, *cache])
    assert sub.exit_code == 0, sub.output
    assert json.loads((tmp_path / "sub" / "config.json").read_text())["k"] == 2
    assert (tmp_path / "sub" / "report" / "index.html").is_file()  # rendered by the command, not by train()
    pairs = tmp_path / "pairs.txt"
    make_pairs(faces, pairs, num_pairs=40, seed=0)
    final = runner.invoke(cli, ["train-final", str(faces), "--out", str(tmp_path / "final"), "--loss", "elastic-cos+", "--sigma", "0.02",
                                "--val", str(pairs), "--val-images", str(faces), *TINY, *cache])
    assert final.exit_code == 0, final.output
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["head"] == "elastic-cos+" and config["sigma"] == 0.02
    saved = json.loads((tmp_path / "final" / "eval.json").read_text())
    assert saved["num_pairs"] == 40 and 0.0 <= saved["accuracy"] <= 1.0

    ev = runner.invoke(cli, ["evaluate", str(tmp_path / "final"), "--pairs", str(pairs), "--images", str(faces), "--json", "--silent"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["accuracy"] == saved["accuracy"]

    emb = runner.invoke(cli, ["embed", str(tmp_path / "sub"), str(faces), "--out", str(tmp_path / "emb"), "--silent"])
    assert emb.exit_code == 0, emb.output
    arr = np.load(tmp_path / "emb" / "embeddings.npy")
    assert arr.shape == (80, 32) and arr.dtype == np.float16
    assert np.allclose(np.linalg.norm(arr.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_errors_are_one_line(faces, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["train-subcenter", str(faces), "--out", str(tmp_path / "r"), "--backbone", "resnet9000", *TINY])
    assert bad.exit_code == 1 and "unknown backbone 'resnet9000'" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(cli, ["evaluate", str(tmp_path), "--pairs", str(faces / "nothing.txt")])
    assert missing.exit_code == 2
    not_run = runner.invoke(cli, ["evaluate", str(faces), "--pairs", __file__])
    assert not_run.exit_code == 1 and "not a training run" in not_run.output


def test_a_failing_report_does_not_fail_a_finished_training(faces, tmp_path, monkeypatch):
    import cleanface.report.training as training_report

    def broken(run_dir):
        raise RuntimeError("template missing")  # any failure, not only cleanface's own errors

    monkeypatch.setattr(training_report, "render_training_report", broken)
    runner = CliRunner()
    result = runner.invoke(cli, ["train-subcenter", str(faces), "--out", str(tmp_path / "run"), "--k", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "COMPLETE").is_file() and (tmp_path / "run" / "model.pt").is_file()
    assert "report could not be rendered (template missing)" in result.output and "cleanface report" in result.output
    skipped = runner.invoke(cli, ["train-subcenter", str(faces), "--out", str(tmp_path / "quiet"), "--k", "2", "--no-report", *TINY])
    assert skipped.exit_code == 0, skipped.output
    assert (tmp_path / "quiet" / "COMPLETE").is_file() and not (tmp_path / "quiet" / "report").exists()
