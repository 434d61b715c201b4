"""Inverting identities and embedding files to a folder: layout, inversion.json, dominance, the command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cleanface.errors import CleanfaceError, ConfigError, DataError
from cleanface.inversion import embed_images, invert_identities, safe_names
from cleanface.inversion.identities import parse_rows, read_dominant, subcenter_targets
from cleanface_cli.main import cli
from tests.inversion.conftest import DIM, K, SIZE


def write_decisions(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "decisions.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["index", "location", "old_identity", "new_identity", "action", "reason", "angle", "nearest_subcenter",
                    "dominant_subcenter", "best_other_identity", "best_other_angle"])
        for i, (name, nearest) in enumerate(rows):
            w.writerow([i, f"{name}/{i}.png", name, name, "keep", "", 10.0, nearest, "", "", ""])
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_safe_names_are_unique_and_harmless():
    names = ["Ann Lee", "ann_lee", "../etc", "a/b", "", "embeddings", "José"]
    safe = safe_names(names)
    assert len({s.lower() for s in safe}) == len(names)
    assert safe[0] == "Ann_Lee" and safe[1] == "ann_lee-1"
    for s in safe:
        assert "/" not in s and not s.startswith(".") and s
    assert safe[5] != "embeddings"


def test_parse_rows():
    assert parse_rows("0,3,5-7,3", 10) == [0, 3, 5, 6, 7]
    assert parse_rows(None, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="outside the embeddings file's 10 rows"):
        parse_rows("8-12", 10)
    with pytest.raises(ConfigError, match="bad row selection 'x'"):
        parse_rows("1,x", 10)
    with pytest.raises(ConfigError, match="choose at most 1000 with --rows"):
        parse_rows(None, 5000)


def test_dominance_from_decisions_and_from_analysis(tmp_path):
    purify = write_decisions(tmp_path / "clean", [("a", 1), ("a", 1), ("a", 0), ("b", 0), ("c", "")])
    got = read_dominant(purify, ["a", "b", "c"], [0, 1, 2], 2)
    assert got["a"][0] == 1 and got["a"][1].tolist() == [1, 2]
    assert got["b"][0] == 0 and got["c"][0] is None
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / "analysis.npz", dominant_subcenter=np.array([2, 0, 1]))
    got = read_dominant(other, ["x", "z"], [0, 2], 3)
    assert got["x"] == (2, None) and got["z"] == (1, None)
    with pytest.raises(DataError, match="neither decisions.csv nor analysis.npz"):
        read_dominant(tmp_path, ["a"], [0], 2)


def test_subcenter_target_choice():
    centers = np.eye(4, dtype=np.float32)[None].repeat(2, axis=0)[:, :3]  # (2, 3, 4)
    all_ = subcenter_targets(centers, ["p", "q"], [0, 1], ["p", "q"], all_subcenters=True)
    assert [t.file for t in all_] == [f"{n}/subcenter_{k}.png" for n in "pq" for k in range(3)]
    dom = subcenter_targets(centers, ["p", "q"], [0, 1], ["p", "q"], all_subcenters=False, dominance={"p": (2, np.array([1, 0, 5]))})
    assert [t.file for t in dom] == ["p/subcenter_2.png", "q/center.png"]
    assert dom[0].meta["dominant"] is True and dom[0].meta["votes"] == 5
    np.testing.assert_allclose(dom[1].vector, np.array([1, 1, 1, 0]) / np.sqrt(3), rtol=1e-6)


def test_invert_identities_writes_the_layout(trained, fake_run, tmp_path):
    names = trained.names[:2]
    purify = write_decisions(tmp_path / "clean", [(names[0], 1)] * 3 + [(names[0], 0)] + [(names[1], 0)] * 2)
    out = invert_identities(fake_run, names, tmp_path / "inv", purify_dir=purify, steps=40, silent=True)
    info = json.loads((out / "inversion.json").read_text())
    assert (out / "COMPLETE").is_file()
    assert info["kind"] == "subcenters" and info["k"] == K and info["settings"]["steps"] == 40
    assert len(info["items"]) == 2 * K
    by_file = {it["file"]: it for it in info["items"]}
    assert by_file[f"{names[0]}/subcenter_1.png"]["dominant"] is True
    assert by_file[f"{names[0]}/subcenter_0.png"]["dominant"] is False
    assert by_file[f"{names[0]}/subcenter_1.png"]["votes"] == 3
    assert [e["dominant"] for e in info["identities"]] == [1, 0]
    # the recorded cosine is that of the written PNG's embedding with its sub-center
    centers = trained.head.class_centers().numpy()
    for it in info["items"]:
        img = read_png(out / it["file"])
        assert img.shape == (SIZE, SIZE, 3)
        emb = embed_images(trained.backbone, img[None])[0]
        assert float(emb @ centers[it["label"], it["subcenter"]]) == pytest.approx(it["cos"], abs=1e-4)


def test_invert_embedding_rows(trained, fake_run, tmp_path):
    # the first image of each of five identities: every row is a different person (images of
    # one identity have embeddings at cosine about 0.96, too close to tell apart after 60 steps)
    first = [int(np.flatnonzero(trained.labels == c)[0]) for c in range(5)]
    emb = embed_images(trained.backbone, trained.images[first])
    np.save(tmp_path / "e.npy", emb.astype(np.float16))
    out = invert_identities(fake_run, [], tmp_path / "inv", embeddings=tmp_path / "e.npy", rows="1,3", steps=60, silent=True)
    info = json.loads((out / "inversion.json").read_text())
    assert [it["file"] for it in info["items"]] == ["embeddings/row_0001.png", "embeddings/row_0003.png"]
    assert [it["row"] for it in info["items"]] == [1, 3] and info["identities"] == []
    got = embed_images(trained.backbone, np.stack([read_png(out / it["file"]) for it in info["items"]]))
    sims = got @ emb.T
    assert sims[0].argmax() == 1 and sims[1].argmax() == 3
    np.save(tmp_path / "bad.npy", np.ones((3, 5), np.float32))
    with pytest.raises(DataError, match=r"expected \(N, %d\)" % DIM):
        invert_identities(fake_run, [], tmp_path / "inv2", embeddings=tmp_path / "bad.npy", steps=1, silent=True)


def test_unknown_identity_and_busy_output(trained, fake_run, tmp_path):
    with pytest.raises(ConfigError, match=r"identity 'id_00001' is not one of the run's 6 identities; did you mean 'id_0001'"):
        invert_identities(fake_run, ["id_00001"], tmp_path / "inv", steps=1, silent=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CleanfaceError, match="not empty"):
        invert_identities(fake_run, trained.names[:1], tmp_path / "busy", steps=1, silent=True)


def test_command(trained, fake_run, tmp_path):
    runner = CliRunner()
    name = trained.names[3]
    res = runner.invoke(cli, ["invert", str(fake_run), "--identity", name, "--sub-centers", "--out", str(tmp_path / "o"), "--steps", "30", "--silent"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 images" in res.output
    assert sorted(p.name for p in (tmp_path / "o" / name).iterdir()) == ["subcenter_0.png", "subcenter_1.png"]
    res = runner.invoke(cli, ["invert", str(fake_run), "--identity", name, "--out", str(tmp_path / "p"), "--steps", "5", "--no-bn-prior", "--silent"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "p" / "inversion.json").read_text())
    assert info["settings"]["bn_weight"] == 0.0 and info["items"][0]["file"] == f"{name}/center.png"
    res = runner.invoke(cli, ["invert", str(fake_run), "--out", str(tmp_path / "q")])
    assert res.exit_code == 2 and "give at least one --identity, --all-identities or an --embeddings file" in res.output
    res = runner.invoke(cli, ["invert", str(fake_run), "--identity", "nobody", "--out", str(tmp_path / "q"), "--silent"])
    assert res.exit_code == 1 and "Error: identity 'nobody' is not one of the run's 6 identities" in res.output


def test_command_has_help():
    res = CliRunner().invoke(cli, ["invert", "--help"])
    assert res.exit_code == 0 and "BatchNorm" in res.output
    for option in ("--identity", "--sub-centers", "--purify", "--embeddings", "--out", "--steps", "--lr", "--seed", "--no-bn-prior", "--device"):
        assert option in res.output


def test_command_passes_the_image_priors(trained, fake_run, tmp_path):
    res = CliRunner().invoke(cli, ["invert", str(fake_run), "--identity", trained.names[0], "--out", str(tmp_path / "o"), "--steps", "2",
                                   "--tv-weight", "0.7", "--jitter", "3", "--flip", "--bn-weight", "0.1", "--lr", "0.2", "--seed", "4", "--silent"])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "o" / "inversion.json").read_text())["settings"]
    assert (settings["tv_weight"], settings["jitter"], settings["flip"], settings["bn_weight"], settings["lr"], settings["seed"]) == (0.7, 3, True, 0.1, 0.2, 4)


def test_the_image_prior_is_drawn_from_the_runs_training_data(trained, fake_run, tmp_path):
    out = invert_identities(fake_run, trained.names[:1], tmp_path / "inv", steps=3, silent=True)
    settings = json.loads((out / "inversion.json").read_text())["settings"]
    assert settings["image_prior"] == {"images": len(trained.images), "size": SIZE, "components": 128}
    assert settings["pixel_weight"] == 1.0 and settings["bn_weight"] == 0.0  # the eigenface prior's defaults
    free = invert_identities(fake_run, trained.names[:1], tmp_path / "free", steps=3, prior_images=0, silent=True)
    assert json.loads((free / "inversion.json").read_text())["settings"]["image_prior"] is None
    with pytest.raises(DataError, match="is not there for the image prior; give a dataset of such faces"):
        invert_identities(fake_run, trained.names[:1], tmp_path / "x", steps=1, data=str(tmp_path / "nowhere"), silent=True)
    assert not (tmp_path / "x").exists()
