"""Hostile and broken input through the command line: a one-line error or a recorded skip, never a
traceback and never an image that silently disappears."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cleanface.data.open import open_dataset
from cleanface.training import checkpoint
from cleanface.inference.embed import embed_index
from cleanface.inference.run import load_run
from cleanface_cli.main import cli
from tests.reliability.conftest import TRAIN

NON_UTF8 = os.fsdecode(b"caf\xe9-\xff")  # a Latin-1 name: not valid UTF-8
LONG = "n" * 250  # near the 255-byte limit of a file name


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"cleanface {' '.join(map(str, args))} raised {result.exception!r}") from result.exception
    return result.exit_code, result.output


def one_line_error(*args) -> str:
    code, output = run(*args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def png(width: int = 8, height: int = 8, colour=(90, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    raw = bytearray(png(1, 1))
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


@pytest.fixture(scope="module")
def hostile(tiny_faces, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tiny faces plus every kind of broken file, odd names and a one-image identity.

    Returns the folder and, for each planted bad entry, the words its recorded reason must hold.
    """
    root = tmp_path_factory.mktemp("hostile") / "data"
    shutil.copytree(tiny_faces, root)
    outside = root.parent / "outside.png"
    outside.write_bytes(png())
    victim = root / "id_0000"
    good = (victim / "id_0000_0001.png").read_bytes()
    (victim / "zero.png").write_bytes(b"")
    (victim / "text.png").write_bytes(b"this is not an image\n")
    (victim / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (victim / "big.png").write_bytes(png_claiming(9000, 9000))
    (victim / "loop.png").symlink_to(victim / "loop.png")
    (victim / "away.png").symlink_to(outside)
    (victim / "tiny.png").write_bytes(png(1, 1))  # a real image of one pixel: used, upscaled
    (victim / "cut.png").write_bytes(good[: len(good) // 2])  # header intact, pixels missing
    for name, count in ((NON_UTF8, 2), (LONG, 2), ("solo", 1)):
        (root / name).mkdir()
        for j in range(count):
            (root / name / f"{j}.png").write_bytes(png(32, 32, (40 * j, 200, 90)))
    planted = {"zero.png": "zero-byte", "text.png": "not an image", "bomb.png": "decompression bomb", "big.png": "decompression bomb",
               "loop.png": "symlink loop", "away.png": "outside the dataset root"}
    return root, planted


def _files_on_disk(root: Path) -> list[Path]:
    """Every file or link inside an identity folder (top-level notes such as synthetic.json are not images)."""
    return [p for p in root.rglob("*") if (p.is_symlink() or p.is_file()) and p.parent != root]


def test_every_broken_file_is_a_recorded_skip(hostile):
    root, planted = hostile
    code, output = run("info", root, "--json")
    assert code == 0, output
    info = json.loads(output)
    reasons = {Path(b["location"]).name: b["reason"] for b in info["bad_list"]}
    for name, words in planted.items():
        assert words in reasons[name], (name, reasons.get(name))
    assert info["identities"] == 9 and info["images_per_identity"]["min"] == 1
    # nothing is silently missing: every file is indexed or listed with its reason
    assert info["images"] + info["bad_files"] == len(_files_on_disk(root))
    code, table = run("info", root)
    assert code == 0 and "zero-byte" in table


def test_training_and_purify_account_for_every_image(hostile, tmp_path):
    root, planted = hostile
    run_dir, clean = tmp_path / "run", tmp_path / "clean"
    code, output = run("train-subcenter", root, "--out", run_dir, *TRAIN, "--epochs", "1", "--k", "2", "--cache-dir", tmp_path / "cache")
    assert code == 0, output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["bad_files"] == len(planted)
    assert config["images_excluded"] == 1  # cut.png: indexed, then fails to decode
    names = (run_dir / "identities.txt").read_bytes().decode("utf-8", "surrogateescape").splitlines()
    assert NON_UTF8 in names and LONG in names and "solo" in names

    code, output = run("purify", run_dir, root, "--out", clean, "--silent")
    assert code == 0, output
    with open(clean / "decisions.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(_files_on_disk(root))  # a decision for every input file, indexed or not
    unindexed = {Path(r["location"]).name: r for r in rows if r["index"] == ""}
    assert sorted(unindexed) == sorted(planted)
    for name, words in planted.items():
        assert unindexed[name]["action"] == "drop" and unindexed[name]["reason"].startswith("not indexed: ")
        assert words in unindexed[name]["reason"], (name, unindexed[name]["reason"])
    assert {NON_UTF8, LONG, "solo"} <= {r["old_identity"] for r in rows}
    assert "\ufffd" in (clean / "report" / "index.html").read_text(encoding="utf-8")  # the undecodable bytes, shown
    cut = next(r for r in rows if r["location"].endswith("cut.png"))
    assert cut["action"] == "drop" and cut["reason"] == "non-finite embedding"
    tiny = next(r for r in rows if r["location"].endswith("tiny.png"))
    assert tiny["angle"] != ""
    # the cleaned folder holds only safe names, all inside the output
    written = [p for p in (clean / "data").rglob("*") if p.is_file()]
    assert len(written) == sum(r["action"] != "drop" and r["action"] != "dedup" for r in rows)
    for path in written:
        assert len(os.fsencode(path.parent.name)) <= 200 and clean.resolve() in path.resolve().parents


def test_one_identity_and_one_image_datasets(tmp_path):
    (tmp_path / "only" / "alone").mkdir(parents=True)
    (tmp_path / "only" / "alone" / "a.png").write_bytes(png())
    code, output = run("info", tmp_path / "only", "--json")
    assert code == 0 and json.loads(output)["identities"] == 1
    line = one_line_error("train-subcenter", tmp_path / "only", "--out", tmp_path / "r", *TRAIN)
    assert "at least 2" in line
    (tmp_path / "empty" / "nobody").mkdir(parents=True)
    (tmp_path / "empty" / "nobody" / "a.png").write_bytes(b"")
    line = one_line_error("info", tmp_path / "empty", "--silent")
    assert "no usable images" in line and "zero-byte" in line


def test_recordio_names_and_manifest_paths_cannot_leave_their_folders(tiny_faces, tmp_path):
    code, output = run("convert", tiny_faces, tmp_path / "rec", "--format", "rec", "--silent")
    assert code == 0, output
    hostile_names = ["../../etc/passwd", "/root/.ssh/id_rsa", "..", "a/../../b", NON_UTF8, "x" * 400]
    (tmp_path / "rec" / "identities.txt").write_bytes("".join(f"{n}\n" for n in hostile_names).encode("utf-8", "surrogateescape"))
    for fmt in ("folder", "manifest"):
        out = tmp_path / f"out-{fmt}"
        before = set(tmp_path.rglob("*"))
        code, output = run("convert", tmp_path / "rec", out, "--format", fmt, "--silent")
        assert code == 0, output
        written = [p for p in set(tmp_path.rglob("*")) - before if p != out and out not in p.parents]
        assert written == [], f"files written outside {out}: {written}"
        back = open_dataset(out if fmt == "folder" else out / "manifest.csv")
        assert len(back) == 48 and back.num_identities == 6
        if fmt == "manifest":  # the manifest keeps the names themselves
            assert sorted(back.names) == sorted(hostile_names)
    assert not Path("/etc/passwd.png").exists()

    manifest = tmp_path / "m" / "list.csv"
    manifest.parent.mkdir()
    (manifest.parent / "a.png").write_bytes(png())
    manifest.write_text("path,identity\na.png,ann\n../../../../etc/passwd,bob\n/etc/hostname,bob\nsub/../../x.png,bob\n")
    code, output = run("info", manifest, "--json")
    assert code == 0, output
    info = json.loads(output)
    assert info["images"] == 1 and info["bad_files"] == 3


def test_a_truncated_idx_or_rec_is_a_one_line_error(tiny_faces, tmp_path):
    code, _ = run("convert", tiny_faces, tmp_path / "rec", "--format", "rec", "--silent")
    assert code == 0
    idx = tmp_path / "rec" / "train.idx"
    good_idx = idx.read_text()
    idx.write_text(good_idx + f"{10**6}\t{10**9}\n")
    line = one_line_error("info", tmp_path / "rec", "--silent")
    assert "train.idx" in line and str(10**9) in line
    idx.write_text(good_idx)
    rec = tmp_path / "rec" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-100])
    line = one_line_error("info", tmp_path / "rec", "--silent")
    assert "train.rec" in line


# -- embeddings and checkpoints ----------------------------------------------------------------------
def _write_embeddings(folder: Path, data: Path, emb: np.ndarray) -> None:
    folder.mkdir()
    np.save(folder / "embeddings.npy", emb.astype(np.float16))
    (folder / "embeddings.json").write_text(json.dumps({"fingerprint": open_dataset(data).fingerprint(), "count": len(emb), "dtype": "float16"}))


def test_non_finite_embeddings_are_dropped_with_their_reason(sub_run, tiny_faces, tmp_path):
    loaded = load_run(sub_run)
    emb = embed_index(loaded.backbone, open_dataset(tiny_faces), tmp_path / "real", size=32, crop=None, silent=True).astype(np.float32)
    emb[3] = np.nan
    emb[7] = np.inf
    emb[11, 0] = -np.inf
    _write_embeddings(tmp_path / "emb", tiny_faces, emb)
    code, output = run("purify", sub_run, tiny_faces, "--out", tmp_path / "clean", "--embeddings", tmp_path / "emb", "--silent")
    assert code == 0, output
    with open(tmp_path / "clean" / "decisions.csv", newline="") as handle:
        rows = {int(r["index"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 48
    for i in (3, 7, 11):
        assert rows[i]["action"] == "drop" and rows[i]["reason"] == "non-finite embedding", rows[i]
    assert json.loads((tmp_path / "clean" / "summary.json").read_text())["non_finite"] == 3


def test_embeddings_of_another_model_are_not_reused(sub_run, tiny_faces, tmp_path):
    index = open_dataset(tiny_faces)
    a = load_run(sub_run).backbone
    b = load_run(sub_run).backbone
    with torch.no_grad():
        next(b.parameters()).mul_(-1.0)
    first = np.array(embed_index(a, index, tmp_path / "emb", size=32, crop=None, silent=True))
    second = np.array(embed_index(b, index, tmp_path / "emb", size=32, crop=None, silent=True))
    fresh = np.array(embed_index(b, index, tmp_path / "fresh", size=32, crop=None, silent=True))
    assert not np.array_equal(first, second)
    assert np.array_equal(second, fresh)


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_corrupted_and_foreign_checkpoints_give_one_line(sub_run, tiny_faces, tmp_path):
    # a flipped bit inside the weights: torch.load alone would accept it
    flipped = _copy_run(sub_run, tmp_path / "flipped")
    data = bytearray((flipped / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (flipped / "model.pt").write_bytes(bytes(data))
    assert "checksum" in one_line_error("embed", flipped, tiny_faces, "--out", tmp_path / "e1", "--silent")
    assert not (tmp_path / "e1" / "embeddings.json").exists()

    cut = _copy_run(sub_run, tmp_path / "cut")
    whole = (cut / "model.pt").read_bytes()
    (cut / "model.pt").write_bytes(whole[: len(whole) // 3])
    for args in (("embed", cut, tiny_faces, "--out", tmp_path / "e2", "--silent"),
                 ("purify", cut, tiny_faces, "--out", tmp_path / "p2", "--silent")):
        assert "model.pt" in one_line_error(*args)
    assert not (tmp_path / "p2").exists()

    # a pickled payload instead of weights: refused, and its code never runs
    evil = _copy_run(sub_run, tmp_path / "evil")
    witness = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(witness),))

    torch.save({"backbone": Payload(), "head": {}, "config": {}, "names": []}, evil / "model.pt")
    for args in (("embed", evil, tiny_faces, "--out", tmp_path / "e3", "--silent"),
                 ("purify", evil, tiny_faces, "--out", tmp_path / "p3", "--silent"),
                 ("evaluate", evil, "--pairs", tiny_faces / "id_0000" / "id_0000_0001.png")):
        line = one_line_error(*args)
        assert "refused" in line and "model.pt" in line, line
    assert not witness.exists()


def test_resuming_with_a_foreign_or_broken_checkpoint_gives_one_line(sub_run, tiny_faces, tmp_path):
    from cleanface.data.synthetic import make_synthetic

    other = make_synthetic(tmp_path / "other", identities=5, per_identity=8, size=32, seed=4, silent=True)
    args = ["train-subcenter", other, "--out", tmp_path / "run", *TRAIN, "--epochs", "1", "--k", "2", "--cache-dir", tmp_path / "cache"]
    code, output = run(*args)
    assert code == 0, output
    for name in ("model.pt", "COMPLETE"):  # as if killed before the end
        (tmp_path / "run" / name).unlink()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    own = last.read_bytes()
    shutil.copy(sub_run / "checkpoints" / "last.pt", last)  # from a run on 6 identities
    assert "another dataset" in one_line_error(*args, "--resume")
    last.write_bytes(own[:-50])
    assert "last.pt" in one_line_error(*args, "--resume")
    last.write_bytes(own)
    assert "other settings" in one_line_error(*args, "--resume", "--backbone", "mobilefacenet")
    state = checkpoint.load(last)
    state["head"]["weight"] = state["head"]["weight"][:, :8]
    checkpoint.save(state, last)
    assert "does not fit" in one_line_error(*args, "--resume")
