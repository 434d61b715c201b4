"""The purify runner against a fake run: hand-made sub-centers and embeddings looked up by image path."""

from __future__ import annotations

import csv
import filecmp
import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cleanface.data.index import DatasetIndex
from cleanface.data.open import open_dataset
from cleanface.errors import DataError
from cleanface.purify import runner
from cleanface.purify.outputs import DECISION_COLUMNS
from cleanface.purify.runner import check_files, purify
from cleanface.purify.settings import PurifySettings
from tests.purify.conftest import D, basis_centers, toward

NAMES = ["ann", "bob", "cy", "dee", "eve"]
PER = 4


def _vector(name: str, j: int) -> np.ndarray:
    c = NAMES.index(name)
    if (name, j) == ("ann", 3):
        return toward(3, 16, 15)  # shows bob: relabelled
    if (name, j) == ("cy", 3):
        return toward(20, 21, 5)  # nobody: dropped
    if (name, j) == ("dee", 2):
        return np.full(D, np.nan)  # a broken embedding
    return toward(3 * c, 15 + j, 12 + 3 * j)


def vector_of(path: str) -> np.ndarray:
    name, file = path.split("/")
    return _vector(name, int(file.split(".")[0]))


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "noisy"
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for j in range(PER):
            Image.new("RGB", (8, 8), (40 * c, 50 * j, 7)).save(root / name / f"{j}.png")
    with open(root / "noise_truth.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "true_identity", "assigned_identity", "noise_type", "source"])
        for name in NAMES:
            for j in range(PER):
                kind = {("ann", 3): "close-set", ("cy", 3): "open-set", ("bob", 0): "close-set"}.get((name, j), "clean")
                w.writerow([f"{name}/{j}.png", name, name, kind, ""])
    return root


@pytest.fixture()
def fake_run(tmp_path: Path, monkeypatch) -> SimpleNamespace:
    run = tmp_path / "run"
    run.mkdir()
    (run / "identities.txt").write_text("\n".join(NAMES) + "\n")
    (run / "model.pt").write_bytes(b"weights")
    calls = SimpleNamespace(load=0, embed=0, dir=run, centers=basis_centers(len(NAMES)))
    head = SimpleNamespace(class_centers=lambda: calls.centers)

    def load(run_dir, device):
        calls.load += 1
        return SimpleNamespace(config={"input_size": 8, "crop": None}, backbone=None, head=head, names=NAMES)

    def embed(backbone, index, out_dir, *, size, crop, flip, device, silent):
        calls.embed += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "embeddings.npy", np.stack([vector_of(p) for p in index.paths]).astype(np.float16))
        (out_dir / "embeddings.json").write_text(json.dumps({"fingerprint": index.fingerprint(), "dtype": "float16", "count": len(index)}))

    monkeypatch.setattr(runner, "_load_run", load)
    monkeypatch.setattr(runner, "_embed", embed)
    return calls


def sys_module():
    """This module, whose ``vector_of`` the fake run embeds with (tests replace it)."""
    return sys.modules[__name__]


def read_decisions(out: Path) -> list[dict]:
    with open(out / "decisions.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == DECISION_COLUMNS
        return list(reader)


def test_purify_writes_a_decision_per_image_and_the_cleaned_dataset(tmp_path, dataset, fake_run):
    out = purify(fake_run.dir, dataset, tmp_path / "clean", truth=dataset / "noise_truth.csv", silent=True)
    rows = read_decisions(out)
    assert sorted(int(r["index"]) for r in rows) == list(range(len(NAMES) * PER))
    by_loc = {Path(r["location"]).relative_to(dataset).as_posix(): r for r in rows}
    assert by_loc["ann/3.png"]["action"] == "relabel" and by_loc["ann/3.png"]["new_identity"] == "bob"
    assert by_loc["cy/3.png"]["action"] == "drop" and by_loc["cy/3.png"]["reason"] == "angle above threshold"
    assert by_loc["dee/2.png"]["reason"] == "non-finite embedding" and by_loc["dee/2.png"]["angle"] == ""
    cleaned = open_dataset(out / "data")
    in_output = [r for r in rows if r["action"] in ("keep", "relabel", "merge", "new-identity")]
    assert len(cleaned) == len(in_output) == len(rows) - 2
    assert Counter(cleaned.identity_of(i) for i in range(len(cleaned))) == Counter(r["new_identity"] for r in in_output)
    assert Counter(r["new_identity"] for r in in_output)["bob"] == PER + 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_before"] == 20 and summary["images_after"] == 18
    assert summary["actions"]["relabel"] == 1 and summary["actions"]["drop"] == 2
    assert summary["faiss"] == {"samples": "Flat", "subcenters": "Flat"}
    # flagged: ann/3 (close-set), cy/3 (open-set), dee/2 (clean); noisy: those two and bob/0 (missed)
    assert summary["truth"]["overall"]["precision"] == pytest.approx(2 / 3, abs=1e-5)
    assert summary["truth"]["overall"]["recall"] == pytest.approx(2 / 3, abs=1e-5)
    assert summary["truth"]["per_type"]["open-set"]["recall"] == 1.0
    assert summary["truth"]["per_type"]["close-set"]["recall"] == 0.5
    with np.load(out / "analysis.npz") as z:
        assert z["dominant_subcenter"].tolist() == [0] * 5 and len(z["angle"]) == 20
    assert (out / "COMPLETE").is_file()


@pytest.mark.parametrize("fmt", ["manifest", "rec"])
def test_other_formats(tmp_path, dataset, fake_run, fmt):
    out = purify(fake_run.dir, dataset, tmp_path / "clean", fmt=fmt, silent=True)
    cleaned = open_dataset(out / ("manifest.csv" if fmt == "manifest" else "train.rec"))
    assert len(cleaned) == 18 and cleaned.num_identities == 5


def test_mismatched_run_fails_before_any_work(tmp_path, dataset, fake_run):
    (fake_run.dir / "identities.txt").write_text("\n".join(NAMES + ["zed"]) + "\n")
    with pytest.raises(DataError) as err:
        purify(fake_run.dir, dataset, tmp_path / "clean", silent=True)
    message = str(err.value)
    assert "\n" not in message and "trained on 6 identities" in message and "has 5" in message and "'zed'" in message
    assert fake_run.load == 0 and fake_run.embed == 0 and not (tmp_path / "clean").exists()


def test_reordered_identities_are_matched_by_name(tmp_path, dataset, fake_run):
    order = list(reversed(NAMES))
    (fake_run.dir / "identities.txt").write_text("\n".join(order) + "\n")
    fake_run.centers = basis_centers(len(NAMES))[[NAMES.index(n) for n in order]]  # the run's label c is order[c]
    out = purify(fake_run.dir, dataset, tmp_path / "clean", silent=True)
    actions = Counter(r["action"] for r in read_decisions(out))
    assert actions == {"keep": 17, "relabel": 1, "drop": 2}
    with np.load(out / "analysis.npz") as z:
        assert z["identity_count"].tolist() == [4, 3, 4, 4, 4]  # eve, dee (one NaN), cy, bob, ann
        assert z["identity_drop_share"].tolist() == [0, 0.25, 0.25, 0, 0]


def test_missing_files_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    index = DatasetIndex.from_lists(tmp_path, "folder", ["a/x.png", "a/gone.png"], ["a", "a"])
    with pytest.raises(DataError, match=r"1 of 2 images of dataset .* are missing \(first: .*gone.png\)"):
        check_files(index, tmp_path)


def test_given_embeddings_and_their_fingerprint(tmp_path, dataset, fake_run):
    emb_dir = tmp_path / "emb"
    runner._embed(None, open_dataset(dataset), emb_dir, size=8, crop=None, flip=False, device="cpu", silent=True)
    fake_run.embed = 0
    out = purify(fake_run.dir, dataset, tmp_path / "clean", embeddings=emb_dir, silent=True)
    assert fake_run.embed == 0 and not (out / "embeddings").exists()
    meta = json.loads((emb_dir / "embeddings.json").read_text())
    meta["fingerprint"] = "0" * 16
    (emb_dir / "embeddings.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="computed for another dataset"):
        purify(fake_run.dir, dataset, tmp_path / "clean2", embeddings=emb_dir, silent=True)


def test_non_empty_output_refused_without_overwrite(tmp_path, dataset, fake_run):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "x").write_text("x")
    with pytest.raises(Exception, match="not empty; pass --overwrite"):
        purify(fake_run.dir, dataset, tmp_path / "clean", silent=True)
    assert fake_run.load == 0
    purify(fake_run.dir, dataset, tmp_path / "clean", overwrite=True, silent=True)
    assert not (tmp_path / "clean" / "x").exists()


def test_interrupted_purify_resumes_without_embedding_and_matches(tmp_path, dataset, fake_run, monkeypatch):
    settings = PurifySettings(dedup=True)
    whole = purify(fake_run.dir, dataset, tmp_path / "whole", settings=settings, silent=True)
    assert fake_run.embed == 1

    real = runner.write_summary

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_summary", boom)
    with pytest.raises(KeyboardInterrupt):
        purify(fake_run.dir, dataset, tmp_path / "resumed", settings=settings, fmt="manifest", silent=True)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.partial" / "manifest.csv").exists()
    monkeypatch.setattr(runner, "write_summary", real)
    resumed = purify(fake_run.dir, dataset, tmp_path / "resumed", settings=settings, silent=True)
    assert fake_run.embed == 2  # once for each output directory, not again on resume
    assert not (resumed / "manifest.csv").exists()  # leftovers of the interrupted attempt are gone
    cmp = filecmp.dircmp(whole, resumed)
    assert sorted(cmp.left_only + cmp.right_only) == []
    assert not (whole / "report").exists()  # the library renders no report: its callers do
    # run_info.json names its own output directory; everything else is byte-identical
    files = [p.relative_to(whole) for p in whole.rglob("*") if p.is_file() and p.name != "run_info.json"]
    assert len(files) > 20
    for rel in files:
        assert (whole / rel).read_bytes() == (resumed / rel).read_bytes(), rel


def test_cli_purify_and_its_errors(tmp_path, dataset, fake_run):
    from click.testing import CliRunner

    from cleanface_cli.main import cli

    runner_ = CliRunner()
    result = runner_.invoke(cli, ["purify", str(fake_run.dir), str(dataset), "--out", str(tmp_path / "clean"), "--silent", "--rounds", "1",
                                  "--truth", str(dataset / "noise_truth.csv"), "--threshold", "70", "--no-relabel"])
    assert result.exit_code == 0, result.output
    assert "20 -> 17" in result.output and "P / R / F1" in result.output
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["settings"]["threshold"] == 70 and summary["settings"]["relabel"] is False
    (fake_run.dir / "identities.txt").write_text("ann\n")
    result = runner_.invoke(cli, ["purify", str(fake_run.dir), str(dataset), "--out", str(tmp_path / "other"), "--silent", "--rounds", "2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "trained on 1 identities" in lines[0]
    assert not (tmp_path / "other.rounds").exists()  # two rounds refused in the first: nothing left behind
    help_text = runner_.invoke(cli, ["purify", "--help"]).output
    assert "--keep-outlier-groups" in help_text and "Clean DATA" in help_text


def test_every_input_file_gets_a_decision(tmp_path, dataset, fake_run):
    (dataset / "ann" / "broken.png").write_bytes(b"this is not a png")  # corrupt header
    (dataset / "bob" / "notes.txt").write_text("not an image")  # unsupported extension
    (dataset / "cy" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(dataset / "cy" / "more" / "9.png")  # nested folder
    assert len(open_dataset(dataset, silent=True).bad_files) >= 3
    out = purify(fake_run.dir, dataset, tmp_path / "clean", silent=True)
    rows = read_decisions(out)
    assert len([r for r in rows if r["index"] != ""]) == len(NAMES) * PER
    unindexed = {Path(r["location"]).name: r for r in rows if r["index"] == ""}
    for name in ("broken.png", "notes.txt", "more"):
        assert name in unindexed, sorted(unindexed)
        assert unindexed[name]["action"] == "drop" and unindexed[name]["reason"].startswith("not indexed: ")
    assert "extension" in unindexed["notes.txt"]["reason"] and "nested" in unindexed["more"]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_files"] == len(unindexed)
    from cleanface.report.decisions_table import read_decisions as read_table

    assert len(read_table(out / "decisions.csv")) == len(NAMES) * PER  # the report reads samples only


def test_a_model_that_did_not_learn_stops_purify_before_anything_is_written(tmp_path, dataset, fake_run, monkeypatch):
    from cleanface.errors import SanityError

    rng = np.random.default_rng(0)
    common = rng.normal(size=D)
    monkeypatch.setattr(sys_module(), "vector_of", lambda path: common + 0.05 * rng.normal(size=D))  # nearly parallel: collapsed
    with pytest.raises(SanityError, match=r"collapsed.*--no-sanity-check"):
        purify(fake_run.dir, dataset, tmp_path / "clean", silent=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["noisy", "run"])  # nothing written: no output, no staging folder
    forced = purify(fake_run.dir, dataset, tmp_path / "forced", settings=PurifySettings(sanity_check=False), silent=True)
    assert (forced / "COMPLETE").is_file()


def test_a_run_whose_training_accuracy_fell_back_to_chance_is_refused_before_embedding(tmp_path, fake_run, monkeypatch):
    from cleanface.errors import SanityError

    names = [f"id{c:02d}" for c in range(20)]
    root = tmp_path / "twenty"
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (8, 8), (10 * c, 90 * j, 7)).save(root / name / f"{j}.png")
    (fake_run.dir / "identities.txt").write_text("\n".join(names) + "\n")
    fake_run.centers = basis_centers(20, k=1, d=24)
    monkeypatch.setattr(sys_module(), "vector_of", lambda path: toward(names.index(path.split("/")[0]), (names.index(path.split("/")[0]) + 1) % 20, 10))
    def metrics(accuracies):  # 4 logged steps per epoch
        rows = [{"step": s + 1, "epoch": (s + 1) / 4, "loss": 10.0, "acc": a} for s, a in enumerate(np.repeat(accuracies, 4))]
        (fake_run.dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    metrics([0.05, 0.21, 0.1, 0.0])  # the reported collapse: 21% at epoch 2, 0% at the end
    with pytest.raises(SanityError, match=r"rose to 0\.2100 and fell to 0\.0000 in the last epoch, near chance for 20 identities"):
        purify(fake_run.dir, root, tmp_path / "clean", silent=True)
    assert fake_run.embed == 0  # refused before embedding
    assert not (tmp_path / "clean").exists() and not (tmp_path / ".clean.partial").exists()
    metrics([0.05, 0.21, 0.5, 0.9])
    assert (purify(fake_run.dir, root, tmp_path / "clean", silent=True) / "COMPLETE").is_file()


def test_purify_command_renders_the_report_after_the_output_is_complete(tmp_path, dataset, fake_run):
    from click.testing import CliRunner

    from cleanface_cli.main import cli

    runner_ = CliRunner()
    quiet = runner_.invoke(cli, ["purify", str(fake_run.dir), str(dataset), "--out", str(tmp_path / "quiet"), "--no-report", "--silent", "--rounds", "1"])
    assert quiet.exit_code == 0, quiet.output
    assert (tmp_path / "quiet" / "COMPLETE").is_file() and not (tmp_path / "quiet" / "report").exists()
    again = runner_.invoke(cli, ["purify", str(fake_run.dir), str(dataset), "--out", str(tmp_path / "quiet"), "--silent", "--rounds", "1"])
    assert again.exit_code == 1 and f"cleanface report {tmp_path / 'quiet'}" in again.output  # complete, report missing: says how to finish
    full = runner_.invoke(cli, ["purify", str(fake_run.dir), str(dataset), "--out", str(tmp_path / "full"), "--silent", "--rounds", "1"])
    assert full.exit_code == 0, full.output
    assert (tmp_path / "full" / "report" / "index.html").is_file() and "report:" in full.output


def test_given_embeddings_of_another_tool_are_matched_by_path(tmp_path, dataset, fake_run):
    computed = purify(fake_run.dir, dataset, tmp_path / "computed", silent=True)
    paths = list(reversed(open_dataset(dataset).paths.tolist()))
    with open(tmp_path / "emb.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "embedding"])
        w.writerows([str(dataset / p), " ".join(f"{v:.9g}" for v in vector_of(p).astype(np.float16))] for p in paths)
    fake_run.embed = 0
    given = purify(fake_run.dir, dataset, tmp_path / "given", embeddings=tmp_path / "emb.csv", silent=True)
    assert fake_run.embed == 0
    assert (given / "decisions.csv").read_bytes() == (computed / "decisions.csv").read_bytes()
    assert json.loads((given / "summary.json").read_text())["subcenters"] == {"source": "run"}
    assert json.loads((given / "run_info.json").read_text())["subcenters"] == {"source": "run"}
