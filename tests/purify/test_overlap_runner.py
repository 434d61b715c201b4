"""The overlap runner on two small image folders with hand-made embeddings: the files, the counts, the inputs untouched, the errors."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cleanface._atomic import staging_path
from cleanface.data.open import open_dataset
from cleanface.errors import ConfigError, DataError
from cleanface.purify import overlap_runner
from cleanface.purify.overlap_runner import IDENTITY_COLUMNS, IMAGE_COLUMNS, overlap
from tests.purify.test_identities import people, photos

PEOPLE, PER, COMMON = 30, 8, 5  # people per dataset, photos per person, people in both (B's first five are A's first five)
COPIED = ("pa00/003.png", "qb00/000.png")  # the same photo in both datasets


def names_a() -> list[str]:
    return [f"pa{c:02d}" for c in range(PEOPLE)]


def names_b() -> list[str]:
    return [f"qb{c:02d}" for c in range(PEOPLE)]


def make_sets(root: Path, *, people_count: int = PEOPLE, per: int = PER) -> SimpleNamespace:
    """Two image folders A and B and the embedding of every image by path ("identity/NNN.png").

    A holds people 0..n-1, B people 0..4 (new photos of them) and n..; B's ``qb00/000.png`` is A's ``pa00/003.png``.
    """
    rng = np.random.default_rng(0)
    centres = people(2 * people_count, 0)
    b_people = list(range(COMMON)) + list(range(people_count, 2 * people_count - COMMON))
    vectors: dict[str, dict[str, np.ndarray]] = {"a": {}, "b": {}}
    for side, who, prefix in (("a", list(range(people_count)), "pa"), ("b", b_people, "qb")):
        for k, c in enumerate(who):
            for j, v in enumerate(photos(centres[c], per, rng)):
                path = f"{prefix}{k:02d}/{j:03d}.png"
                vectors[side][path] = v.astype(np.float32)
                folder = root / side / f"{prefix}{k:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), ((7 * k) % 256, (31 * j) % 256, 90 if side == "a" else 200)).save(folder / f"{j:03d}.png")
    vectors["b"][COPIED[1]] = vectors["a"][COPIED[0]].copy()
    shutil.copyfile(root / "a" / COPIED[0], root / "b" / COPIED[1])
    return SimpleNamespace(a=root / "a", b=root / "b", vectors=vectors)


def matrix(vectors: dict[str, np.ndarray], paths: list[str]) -> np.ndarray:
    return np.stack([vectors[p] for p in paths]).astype(np.float32)


def write_embed_dir(folder: Path, data: Path, vectors: dict[str, np.ndarray]) -> Path:
    """The layout of ``cleanface embed``: rows in dataset order, the fingerprint in embeddings.json."""
    index = open_dataset(data, silent=True)
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", matrix(vectors, index.paths.tolist()))
    (folder / "embeddings.json").write_text(json.dumps({"fingerprint": index.fingerprint(), "count": len(index), "dtype": "float32"}))
    return folder


def write_npy(path: Path, data: Path, vectors: dict[str, np.ndarray]) -> Path:
    """An .npy of another tool with NAME.paths.txt beside it: rows shuffled, every other path absolute."""
    paths = sorted(vectors)
    order = np.random.default_rng(3).permutation(len(paths))
    rows = [paths[i] for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix(vectors, rows))
    path.with_name(path.stem + ".paths.txt").write_text("".join((str(data / r) if n % 2 else r) + "\n" for n, r in enumerate(rows)))
    return path


def write_csv_embeddings(path: Path, vectors: dict[str, np.ndarray]) -> Path:
    """A CSV keyed by path with one column per dimension."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        dims = len(next(iter(vectors.values())))
        writer.writerow(["path"] + [f"d{i}" for i in range(dims)])
        for p, v in sorted(vectors.items()):
            writer.writerow([p] + [f"{x:.7f}" for x in v])
    return path


def snapshot(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``roots``: (size, mtime in ns, SHA-256)."""
    out = {}
    for root in roots:
        for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            st = f.stat()
            out[str(f)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sets_with_embeddings(root: Path) -> SimpleNamespace:
    """The two datasets under ``root`` with A's embeddings as a ``cleanface embed`` directory and B's as an .npy + paths."""
    found = make_sets(root / "data")
    found.emb_a = write_embed_dir(root / "emb-a", found.a, found.vectors["a"])
    found.emb_b = write_npy(root / "emb-b" / "feats.npy", found.b, found.vectors["b"])
    return found


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> SimpleNamespace:
    return sets_with_embeddings(tmp_path_factory.mktemp("overlap-sets"))


@pytest.fixture()
def result(sets, tmp_path) -> Path:
    before = snapshot(sets.a, sets.b, sets.emb_a, sets.emb_b.parent)
    out = overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=sets.emb_a, embeddings_b=sets.emb_b, silent=True)
    assert snapshot(sets.a, sets.b, sets.emb_a, sets.emb_b.parent) == before  # the inputs are only read
    return out


def test_identities_csv_names_the_shared_people_best_score_first(result):
    rows = read_csv(result / "identities.csv")
    assert list(rows[0]) == list(IDENTITY_COLUMNS)
    assert len(rows) == PEOPLE and {r["identity_a"] for r in rows} == set(names_a())
    shared = [r for r in rows if r["shared"] == "true"]
    assert sorted((r["identity_a"], r["identity_b"]) for r in shared) == [(f"pa{c:02d}", f"qb{c:02d}") for c in range(COMMON)]
    assert rows[:COMMON] == shared  # the shared ones come first
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert min(scores[:COMMON]) > 0.9 and max(scores[COMMON:]) < 0.5
    assert all(r["images_a"] == str(PER) and r["images_b"] == str(PER) and r["identity_b"].startswith("qb") for r in rows)
    assert all(float(r["similarity"]) > 0.8 for r in shared) and all(float(r["similarity"]) < 0.5 for r in rows[COMMON:])


def test_images_csv_holds_the_copied_photo(result, sets):
    rows = read_csv(result / "images.csv")
    assert len(rows) == 1 and list(rows[0]) == list(IMAGE_COLUMNS)
    index_a, index_b = open_dataset(sets.a, silent=True), open_dataset(sets.b, silent=True)
    row = rows[0]
    a, b = int(row["index_a"]), int(row["index_b"])
    assert index_a.paths[a] == COPIED[0] and index_b.paths[b] == COPIED[1]
    assert (row["identity_a"], row["identity_b"]) == ("pa00", "qb00")
    assert Path(row["location_a"]) == (sets.a / COPIED[0]).absolute() and Path(row["location_b"]) == (sets.b / COPIED[1]).absolute()
    assert float(row["cos"]) == pytest.approx(1.0, abs=1e-5)


def test_summary_counts_settings_and_calibration(result, sets):
    summary = json.loads((result / "summary.json").read_text())
    assert summary["counts"] == {"images_a": PEOPLE * PER, "images_b": PEOPLE * PER, "identities_a": PEOPLE, "identities_b": PEOPLE,
                                 "shared_identities": COMMON, "image_pairs": 1, "images_a_in_b": 1}
    assert summary["settings"] == {"cut": 0.5, "dup_cos": 0.98}
    cal = summary["calibration"]
    assert cal["used"] and cal["shared_rate"] == pytest.approx(COMMON / PEOPLE, abs=0.08) and cal["cut"] == 0.5
    assert summary["inputs"]["data_a"] == str(sets.a.absolute()) and summary["inputs"]["embeddings_b"] == str(sets.emb_b.absolute())
    assert summary["inputs"]["run"] is None and "paths_a" not in summary["inputs"]
    assert summary["elapsed_s"] >= 0
    assert (result / "COMPLETE").is_file() and not (result / "embeddings").exists()
    assert not staging_path(result).exists()


def test_images_a_in_b_counts_distinct_images_of_a(sets, tmp_path):
    """Two copies in B of one photo of A are two pairs but one image of A found in B."""
    vectors_b = dict(sets.vectors["b"])
    vectors_b["qb01/000.png"] = sets.vectors["a"][COPIED[0]].copy()
    emb_b = write_npy(tmp_path / "emb-b2.npy", sets.b, vectors_b)
    out = overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=sets.emb_a, embeddings_b=emb_b, silent=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["image_pairs"] == 2 and summary["counts"]["images_a_in_b"] == 1
    assert [r["identity_b"] for r in read_csv(out / "images.csv")] == ["qb00", "qb01"]


def test_csv_embeddings_and_too_few_identities_to_calibrate(tmp_path):
    small = make_sets(tmp_path / "small", people_count=6, per=4)
    emb_a = write_csv_embeddings(tmp_path / "a.csv", small.vectors["a"])
    emb_b = write_csv_embeddings(tmp_path / "b.csv", small.vectors["b"])
    out = overlap(small.a, small.b, tmp_path / "out", embeddings_a=emb_a, embeddings_b=emb_b, silent=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["used"] is False and "too few identities" in summary["calibration"]["reason"]
    assert summary["counts"]["shared_identities"] == 0 and summary["counts"]["image_pairs"] == 1
    rows = read_csv(out / "identities.csv")
    assert len(rows) == 6 and all(r["score"] == "" and r["shared"] == "false" for r in rows)
    similarity = [float(r["similarity"]) for r in rows]
    assert similarity == sorted(similarity, reverse=True)  # without scores, the most similar first
    assert {r["identity_a"] for r in rows[:COMMON]} == {f"pa{c:02d}" for c in range(COMMON)}


def test_empty_cells_for_an_identity_without_a_usable_embedding(sets, tmp_path):
    vectors_a = dict(sets.vectors["a"])
    for j in range(PER):
        vectors_a[f"pa29/{j:03d}.png"] = np.full(len(vectors_a[COPIED[0]]), np.nan, dtype=np.float32)
    emb_a = write_npy(tmp_path / "emb-a.npy", sets.a, vectors_a)
    out = overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=emb_a, embeddings_b=sets.emb_b, silent=True)
    rows = read_csv(out / "identities.csv")
    assert rows[-1] == {"identity_a": "pa29", "images_a": str(PER), "identity_b": "", "images_b": "", "similarity": "", "score": "",
                        "shared": "false"}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("kwargs, message", [
    ({}, "overlap needs embeddings of both datasets"),
    ({"embeddings_a": "A"}, "embeddings of dataset A were given but not of dataset B: pass --embeddings-b"),
    ({"embeddings_b": "B"}, "embeddings of dataset B were given but not of dataset A: pass --embeddings-a"),
    ({"run": "RUN", "embeddings_a": "A", "embeddings_b": "B"}, "give either a training run .* not both"),
    ({"run": "RUN", "embeddings_b": "B"}, "give either a training run .* not both"),
    ({"run": "RUN", "paths_a": "P"}, "--paths-a lists the images of an --embeddings-a .npy"),
    ({"embeddings_a": "A", "embeddings_b": "B", "cut": 1.0}, r"cut .* must lie within \(0, 1\), got 1.0"),
    ({"embeddings_a": "A", "embeddings_b": "B", "dup_cos": 0.0}, r"dup_cos .* must lie within \(0, 1\], got 0.0"),
])
def test_missing_or_ambiguous_options_are_one_line_config_errors(sets, tmp_path, kwargs, message):
    kwargs = {k: (getattr(sets, {"A": "emb_a", "B": "emb_b"}[v]) if v in ("A", "B") else tmp_path if v == "RUN" else v)
              for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as exc:
        overlap(sets.a, sets.b, tmp_path / "out", silent=True, **kwargs)
    assert re.search(message, _one_line(exc))
    assert not (tmp_path / "out").exists() and not staging_path(tmp_path / "out").exists()


def test_embeddings_of_different_sizes_are_refused(sets, tmp_path):
    half = {p: v[: len(v) // 2] for p, v in sets.vectors["b"].items()}
    emb_b = write_npy(tmp_path / "half.npy", sets.b, half)
    with pytest.raises(DataError) as exc:
        overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=sets.emb_a, embeddings_b=emb_b, silent=True)
    dim = len(sets.vectors["a"][COPIED[0]])
    assert f"are {dim}-d but those of dataset B" in _one_line(exc) and f"are {dim // 2}-d; embed both datasets with one model" in str(exc.value)
    assert not (tmp_path / "out").exists() and not staging_path(tmp_path / "out").exists()


def test_embeddings_of_another_dataset_are_refused(sets, tmp_path):
    with pytest.raises(DataError) as exc:
        overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=sets.emb_a, embeddings_b=sets.emb_a, silent=True)
    assert "computed for another dataset" in _one_line(exc)


def test_an_output_over_a_dataset_is_refused_and_the_dataset_kept(sets, tmp_path):
    before = snapshot(sets.a)
    for out, overwrite in ((sets.a, True), (sets.a / "pa00" / "report", False), (sets.a.parent, True)):
        with pytest.raises(ConfigError) as exc:
            overlap(sets.a, sets.b, out, embeddings_a=sets.emb_a, embeddings_b=sets.emb_b, overwrite=overwrite, silent=True)
        assert "overlaps the dataset" in _one_line(exc)
    assert snapshot(sets.a) == before


def test_a_non_empty_output_needs_overwrite(result, sets):
    with pytest.raises(Exception, match="not empty; pass --overwrite"):
        overlap(sets.a, sets.b, result, embeddings_a=sets.emb_a, embeddings_b=sets.emb_b, silent=True)
    (result / "stray.txt").write_text("old")
    overlap(sets.a, sets.b, result, embeddings_a=sets.emb_a, embeddings_b=sets.emb_b, overwrite=True, silent=True)
    assert not (result / "stray.txt").exists() and (result / "COMPLETE").is_file()


def _killed(*args, **kwargs):
    raise KeyboardInterrupt  # as if stopped by Ctrl-C after embedding


# -- with a run: the stand-in model embeds by path, the cache survives an interruption -----------------
@pytest.fixture()
def stand_in_run(sets, tmp_path, monkeypatch) -> SimpleNamespace:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"weights")
    calls: list[str] = []
    by_root = {str(sets.a.absolute()): sets.vectors["a"], str(sets.b.absolute()): sets.vectors["b"]}
    monkeypatch.setattr(overlap_runner, "_load_run", lambda run_dir, device: SimpleNamespace(config={"input_size": 16, "crop": None}, backbone="net"))

    def embed(backbone, index, out_dir, *, size, crop, device, silent):
        assert (backbone, size, crop) == ("net", 16, None)
        calls.append(str(index.root))
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "embeddings.npy", matrix(by_root[str(index.root)], index.paths.tolist()).astype(np.float16))
        (out_dir / "embeddings.json").write_text(json.dumps({"fingerprint": index.fingerprint(), "dtype": "float16", "count": len(index)}))

    monkeypatch.setattr(overlap_runner, "_embed", embed)
    return SimpleNamespace(dir=run, calls=calls)


def test_with_a_run_both_datasets_are_embedded_and_kept(sets, stand_in_run, tmp_path):
    out = overlap(sets.a, sets.b, tmp_path / "out", run=stand_in_run.dir, silent=True)
    assert stand_in_run.calls == [str(sets.a.absolute()), str(sets.b.absolute())]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["shared_identities"] == COMMON and summary["counts"]["images_a_in_b"] == 1
    assert summary["inputs"]["embedded"] == {"a": "computed", "b": "computed"} and summary["inputs"]["run"] == str(stand_in_run.dir)
    assert (out / "embeddings" / "a" / "embeddings.npy").is_file() and (out / "embeddings" / "b" / "source.json").is_file()


def test_an_interrupted_overlap_resumes_without_embedding_again(sets, stand_in_run, tmp_path, monkeypatch):
    real = overlap_runner.find_overlap
    monkeypatch.setattr(overlap_runner, "find_overlap", _killed)
    with pytest.raises(KeyboardInterrupt):
        overlap(sets.a, sets.b, tmp_path / "out", run=stand_in_run.dir, silent=True)
    stage = staging_path(tmp_path / "out")
    assert not (tmp_path / "out").exists() and (stage / "embeddings" / "b" / "source.json").is_file()
    assert len(stand_in_run.calls) == 2
    monkeypatch.setattr(overlap_runner, "find_overlap", real)
    out = overlap(sets.a, sets.b, tmp_path / "out", run=stand_in_run.dir, silent=True)
    assert len(stand_in_run.calls) == 2  # both read back from the staging directory
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["embedded"] == {"a": "cached", "b": "cached"} and summary["counts"]["shared_identities"] == COMMON


def test_a_cache_of_another_model_is_embedded_again(sets, stand_in_run, tmp_path, monkeypatch):
    real = overlap_runner.find_overlap
    monkeypatch.setattr(overlap_runner, "find_overlap", _killed)
    with pytest.raises(KeyboardInterrupt):
        overlap(sets.a, sets.b, tmp_path / "out", run=stand_in_run.dir, silent=True)
    (stand_in_run.dir / "model.pt").write_bytes(b"other weights")  # the run was trained further meanwhile
    monkeypatch.setattr(overlap_runner, "find_overlap", real)
    out = overlap(sets.a, sets.b, tmp_path / "out", run=stand_in_run.dir, silent=True)
    assert len(stand_in_run.calls) == 4
    assert json.loads((out / "summary.json").read_text())["inputs"]["embedded"] == {"a": "computed", "b": "computed"}
