"""The purify report from a real purify run (the runner with a stand-in model and hand-made embeddings)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cleanface.report.purify import render_purify_report

from .fixtures import broken_links, parse_page

runner = pytest.importorskip("cleanface.purify.runner")
NAMES = ["ann", "bob", "cy", "dee"]
PER = 5
D = 16


def _unit(a: int, b: int, degrees: float) -> np.ndarray:
    v = np.zeros(D)
    t = np.radians(degrees)
    v[a], v[b] = np.cos(t), np.sin(t)
    return v


def _embedding(name: str, j: int) -> np.ndarray:
    c = NAMES.index(name)
    if (name, j) == ("ann", 4):
        return _unit(3, 15, 14)  # close to bob's dominant sub-center: relabelled
    if (name, j) == ("cy", 4):
        return _unit(13, 14, 5)  # far from everyone: dropped
    return _unit(3 * c, 12 + j % 3, 10 + 4 * j)


@pytest.fixture()
def purified(tmp_path: Path, monkeypatch) -> Path:
    if not (hasattr(runner, "_load_run") and hasattr(runner, "_embed")):
        pytest.skip("the purify runner has no model loading/embedding hooks to stand in for")
    data = tmp_path / "noisy"
    with_truth = []
    for c, name in enumerate(NAMES):
        (data / name).mkdir(parents=True)
        for j in range(PER):
            Image.new("RGB", (16, 16), (60 * c, 40 * j, 90)).save(data / name / f"{j}.png")
            with_truth.append([f"{name}/{j}.png", name, name, {("ann", 4): "close-set", ("cy", 4): "open-set"}.get((name, j), "clean"), ""])
    with open(data / "noise_truth.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "true_identity", "assigned_identity", "noise_type", "source"], *with_truth])
    run = tmp_path / "run"
    run.mkdir()
    (run / "identities.txt").write_text("\n".join(NAMES) + "\n")
    (run / "model.pt").write_bytes(b"weights")
    centers = np.stack([np.stack([np.eye(D)[3 * c + j] for j in range(3)]) for c in range(len(NAMES))]).astype(np.float32)
    head = SimpleNamespace(class_centers=lambda: centers)
    monkeypatch.setattr(runner, "_load_run", lambda run_dir, device: SimpleNamespace(config={"input_size": 16, "crop": None}, backbone=None, head=head, names=NAMES))

    def embed(backbone, index, out_dir, **kw):
        out_dir.mkdir(parents=True, exist_ok=True)
        vectors = np.stack([_embedding(p.split("/")[0], int(p.split("/")[1].split(".")[0])) for p in index.paths])
        np.save(out_dir / "embeddings.npy", vectors.astype(np.float16))
        (out_dir / "embeddings.json").write_text(json.dumps({"fingerprint": index.fingerprint(), "dtype": "float16", "count": len(index)}))

    monkeypatch.setattr(runner, "_embed", embed)
    return runner.purify(run, data, tmp_path / "clean", truth=data / "noise_truth.csv", silent=True)


def test_report_of_a_real_purify_output(purified):
    index = render_purify_report(purified)
    summary = json.loads((purified / "summary.json").read_text())
    text = " ".join(" ".join(parse_page(index).text).split())
    assert f"{summary['images_before']} \u2192 {summary['images_after']}" in text
    assert f"{summary['identities_before']} \u2192 {summary['identities_after']}" in text
    for n in range(summary["identities_before"]):
        assert (index.parent / "identities" / f"{n}.html").is_file()
    assert broken_links(index.parent) == []
    html = index.read_text()
    assert "by noise type" in html  # truth joined through run_info.json
    if summary["actions"].get("relabel"):
        assert "Relabel moves ({})".format(summary["actions"]["relabel"]) in text
    calibration = summary.get("calibration") or {}
    if calibration.get("used"):
        threshold = calibration.get("threshold")
        assert "drop threshold (calibrated) " + ("none reached" if threshold is None else f"{threshold:.1f}\u00b0") in text
        assert f"estimated noise {100 * calibration['noise_rate']:.1f}%" in text
        assert (index.parent / "pages" / "suspects-1.html").is_file()
    elif summary.get("drop_rule") == "calibrated":
        assert f"fell back to the angle rule: {calibration['reason']}" in text
