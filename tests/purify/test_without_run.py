"""Purify without a training run: k-means sub-centers of given embeddings, in every input layout, and the CLI form."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleanface.data.open import open_dataset
from cleanface.errors import DataError, SanityError
from cleanface.inference.stored import align_rows, read_embeddings
from cleanface.purify.kmeans import spherical_kmeans
from cleanface.purify.runner import purify, purify_from_embeddings
from cleanface.purify.settings import PurifySettings
from tests.purify.conftest import D, axis, toward

NAMES = ["ann", "bob", "cy", "dee", "eve"]
COUNTS = {"ann": 6, "bob": 6, "cy": 6, "dee": 6, "eve": 2}  # eve has fewer images than K


def vector(name: str, j: int) -> np.ndarray:
    c = NAMES.index(name)
    if (name, j) == ("ann", 5):
        return toward(8, 9, 10)  # nobody: dropped
    if (name, j) == ("bob", 5):
        return toward(2, 11, 10)  # looks like cy: relabelled
    if (name, j) == ("dee", 4):
        return np.full(D, np.nan)  # a broken embedding
    return toward(c, 10 + (3 * c + j) % 14, 12 + 3 * j)  # 12-27 degrees around the identity's axis


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "noisy"
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for j in range(COUNTS[name]):
            Image.new("RGB", (8, 8), (40 * c, 30 * j, 7)).save(root / name / f"{j}.png")
    return root


def rel_paths() -> list[str]:
    return [f"{name}/{j}.png" for name in NAMES for j in range(COUNTS[name])]


def matrix(paths: list[str]) -> np.ndarray:
    return np.stack([vector(p.split("/")[0], int(Path(p).stem)) for p in paths]).astype(np.float32)


def write_embed_dir(folder: Path, data: Path) -> Path:
    """The layout of `cleanface embed`: rows in dataset order, fingerprint in embeddings.json."""
    index = open_dataset(data, silent=True)
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", matrix(index.paths.tolist()))
    (folder / "embeddings.json").write_text(json.dumps({"fingerprint": index.fingerprint(), "count": len(index), "dtype": "float32"}))
    return folder


def shuffled(data: Path) -> list[str]:
    """Every image once, out of order, half of them as absolute paths and some with ./ in them."""
    paths = rel_paths()
    order = np.random.default_rng(1).permutation(len(paths))
    return [str(data / paths[i]) if n % 2 else f"./{paths[i]}" for n, i in enumerate(order)]


def write_npy(folder: Path, data: Path, rows: list[str], *, beside: bool = True) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    npy = folder / "feats.npy"
    np.save(npy, matrix([os.path.relpath(r, data) if os.path.isabs(r) else os.path.normpath(r) for r in rows]))
    listing = folder / ("feats.paths.txt" if beside else "list.txt")
    listing.write_text("".join(r + "\n" for r in rows))
    return npy, listing


def write_csv(path: Path, rows: list[str], data: Path, *, vector_column: bool) -> Path:
    emb = matrix([os.path.relpath(r, data) if os.path.isabs(r) else os.path.normpath(r) for r in rows])
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        if vector_column:
            w.writerow(["path", "identity", "embedding"])
            w.writerows([r, r.split("/")[-2], "[" + ", ".join(f"{v:.9g}" for v in e) + "]"] for r, e in zip(rows, emb))
        else:
            w.writerow(["path"] + [f"e{d}" for d in range(D)] + ["identity"])
            w.writerows([r] + [f"{v:.9g}" for v in e] + [r.split("/")[-2]] for r, e in zip(rows, emb))
    return path


def decisions_of(out: Path) -> list[dict]:
    with open(out / "decisions.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def by_path(out: Path, data: Path) -> dict[str, dict]:
    return {Path(r["location"]).relative_to(data).as_posix(): r for r in decisions_of(out)}


# -- spherical k-means -----------------------------------------------------------------------------
def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Identity 0: clusters of 6, 4 and 2 rows around axes 0, 1, 2; identity 1: 5 and 3 around axes 3, 4 and one NaN row;
    identity 2: 2 rows (fewer than K); identity 3: only NaN rows. Rows are shuffled; returns rows, labels, planted axes."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for label, clusters in enumerate([[(0, 6), (1, 4), (2, 2)], [(3, 5), (4, 3)]]):
        for a, size in clusters:
            for _ in range(size):
                noise = 0.03 * rng.normal(size=D)
                noise[:5] = 0
                rows.append(axis(a) + noise)
                labels.append(label)
    rows += [np.full(D, np.nan), toward(6, 7, 20), toward(6, 8, 20), np.full(D, np.nan)]
    labels += [1, 2, 2, 3]
    order = rng.permutation(len(rows))
    return np.stack(rows)[order].astype(np.float32), np.array(labels)[order], [[0, 1, 2], [3, 4]]


def test_kmeans_recovers_planted_clusters_and_is_deterministic():
    emb, labels, axes = planted()
    fit = spherical_kmeans(emb, labels, 4, k=3, seed=0)
    assert fit.centers.shape == (4, 3, D) and fit.centers.dtype == np.float32 and fit.converged
    for label, planted_axes in enumerate(axes):
        cos = fit.centers[label] @ np.stack([axis(a) for a in planted_axes]).T  # (K, planted)
        assert (cos.max(axis=0) > 0.98).all(), cos  # every planted cluster has its sub-center
    seen = set()
    for a in axes[0]:  # identity 0 has K clusters: the rows of each share one sub-center, which the others' rows do not use
        rows = (labels == 0) & (np.argmax(emb[:, :5], axis=1) == a)
        used = set(fit.assignment[rows].tolist())
        assert len(used) == 1 and not used & seen
        seen |= used
    again = spherical_kmeans(emb, labels, 4, k=3, seed=0)
    assert np.array_equal(again.centers, fit.centers) and np.array_equal(again.assignment, fit.assignment)
    chunked = spherical_kmeans(emb, labels, 4, k=3, seed=0, chunk=3)
    np.testing.assert_allclose(chunked.centers, fit.centers, atol=1e-5)


def test_kmeans_small_identities_nan_rows_and_empty_ones():
    emb, labels, _ = planted()
    fit = spherical_kmeans(emb, labels, 5, k=3, seed=7)
    assert (fit.assignment[~np.isfinite(emb).all(axis=1)] == -1).all()
    assert (fit.assignment[np.isfinite(emb).all(axis=1)] >= 0).all()
    mean = emb[labels == 2].sum(axis=0)
    mean /= np.linalg.norm(mean)
    np.testing.assert_allclose(fit.centers[2], np.stack([mean] * 3), atol=1e-6)  # fewer images than K: the mean, K times
    assert not fit.centers[3].any() and not fit.centers[4].any()  # only NaN rows / no rows: zero vectors
    assert np.isfinite(fit.centers).all()
    np.testing.assert_allclose(np.linalg.norm(fit.centers[:3], axis=2), 1.0, atol=1e-5)
    one = spherical_kmeans(emb, labels, 5, k=1)
    assert one.centers.shape == (5, 1, D) and (one.assignment[np.isfinite(emb).all(axis=1)] == 0).all()
    with pytest.raises(DataError, match="labels must lie in"):
        spherical_kmeans(emb, labels, 3)


def test_kmeans_float16_memmap_input(tmp_path):
    emb, labels, _ = planted()
    np.save(tmp_path / "e.npy", emb.astype(np.float16))
    fit = spherical_kmeans(np.load(tmp_path / "e.npy", mmap_mode="r"), labels, 4, k=3)
    ref = spherical_kmeans(emb.astype(np.float16).astype(np.float32), labels, 4, k=3)
    np.testing.assert_allclose(fit.centers, ref.centers, atol=1e-6)


# -- purify without a run ---------------------------------------------------------------------------
def test_purify_without_a_run_drops_the_planted_noise_and_writes_everything(tmp_path, dataset):
    emb_dir = write_embed_dir(tmp_path / "emb", dataset)
    out = purify_from_embeddings(dataset, emb_dir, tmp_path / "clean", silent=True)
    rows = by_path(out, dataset)
    assert len(rows) == sum(COUNTS.values())
    assert rows["ann/5.png"]["action"] == "drop" and rows["ann/5.png"]["reason"] == "noise score above cut"
    assert float(rows["ann/5.png"]["noise_score"]) >= 0.5 > max(float(r["noise_score"]) for r in rows.values() if r["noise_score"] and r["action"] == "keep")
    assert rows["bob/5.png"]["action"] == "relabel" and rows["bob/5.png"]["new_identity"] == "cy"
    assert rows["dee/4.png"]["reason"] == "non-finite embedding"
    assert {r["action"] for p, r in rows.items() if p not in ("ann/5.png", "bob/5.png", "dee/4.png")} == {"keep"}
    for entry in ("data", "decisions.csv", "summary.json", "analysis.npz", "run_info.json", "COMPLETE"):
        assert (out / entry).exists(), entry
    assert not (out / "embeddings").exists()
    cleaned = open_dataset(out / "data", silent=True)
    assert len(cleaned) == sum(COUNTS.values()) - 2 and cleaned.num_identities == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 3 and {a: n for a, n in summary["actions"].items() if n} == {"keep": 23, "drop": 2, "relabel": 1}
    assert summary["subcenters"] == {"source": "kmeans", "k": 3, "seed": 0, "iterations": summary["subcenters"]["iterations"], "converged": True}
    info = json.loads((out / "run_info.json").read_text())
    assert info["run"] is None and info["embeddings"] == str(emb_dir) and info["subcenters"]["source"] == "kmeans"
    assert "kmeans" in info["seconds"]
    again = purify(None, dataset, tmp_path / "again", embeddings=emb_dir, silent=True)  # run_dir=None delegates
    assert (again / "decisions.csv").read_bytes() == (out / "decisions.csv").read_bytes()
    assert (again / "summary.json").read_bytes() == (out / "summary.json").read_bytes()


def test_k_and_seed_are_recorded(tmp_path, dataset):
    emb_dir = write_embed_dir(tmp_path / "emb", dataset)
    out = purify_from_embeddings(dataset, emb_dir, tmp_path / "clean", k=1, settings=PurifySettings(seed=5), fmt="manifest", silent=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 1 and summary["subcenters"]["k"] == 1 and summary["subcenters"]["seed"] == 5
    assert (out / "manifest.csv").is_file()
    assert by_path(out, dataset)["ann/5.png"]["action"] == "drop"


@pytest.fixture()
def layouts(tmp_path, dataset) -> dict[str, dict]:
    """The same embeddings in each input layout: keyword arguments of purify_from_embeddings."""
    rows = shuffled(dataset)
    npy, listing = write_npy(tmp_path / "beside", dataset, rows)
    npy2, listing2 = write_npy(tmp_path / "given", dataset, rows, beside=False)
    found = {
        "embed": {"embeddings": write_embed_dir(tmp_path / "emb", dataset)},
        "npy-beside": {"embeddings": npy},
        "npy-paths": {"embeddings": npy2, "paths": listing2},
        "csv-columns": {"embeddings": write_csv(tmp_path / "cols.csv", rows, dataset, vector_column=False)},
        "csv-vector": {"embeddings": write_csv(tmp_path / "vec.csv", rows, dataset, vector_column=True)},
    }
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return found
    emb = matrix([os.path.relpath(r, dataset) if os.path.isabs(r) else os.path.normpath(r) for r in rows])
    pq.write_table(pa.table({"path": rows, "embedding": pa.array(emb.tolist(), type=pa.list_(pa.float32()))}), tmp_path / "vec.parquet")
    pq.write_table(pa.table({"path": rows, **{f"e{d}": emb[:, d] for d in range(D)}}), tmp_path / "cols.parquet")
    found["parquet-vector"] = {"embeddings": tmp_path / "vec.parquet"}
    found["parquet-columns"] = {"embeddings": tmp_path / "cols.parquet"}
    return found


def test_every_input_layout_gives_the_same_decisions(tmp_path, dataset, layouts):
    index = open_dataset(dataset, silent=True)
    reference = np.asarray(read_embeddings(layouts["embed"]["embeddings"], index))
    outputs = {}
    for name, kwargs in layouts.items():
        np.testing.assert_array_equal(np.asarray(read_embeddings(kwargs["embeddings"], index, paths=kwargs.get("paths"))), reference, err_msg=name)
        outputs[name] = purify_from_embeddings(dataset, out=tmp_path / f"out-{name}", silent=True, **kwargs)
    first = outputs["embed"]
    for name, out in outputs.items():
        for file in ("decisions.csv", "summary.json", "analysis.npz"):
            assert (out / file).read_bytes() == (first / file).read_bytes(), (name, file)


def test_paths_through_a_symlinked_root_and_a_manifest(tmp_path, dataset):
    link = tmp_path / "link"
    link.symlink_to(dataset)
    rows = [str(dataset / p) for p in rel_paths()]  # absolute through the resolved root, while the dataset is opened through the link
    index = open_dataset(link, silent=True)
    assert np.array_equal(align_rows(rows, index, "x"), np.arange(len(index)))
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,identity\n" + "".join(f"{dataset / p},{p.split('/')[0]}\n" for p in rel_paths()))
    mindex = open_dataset(manifest, silent=True)
    rel = [os.path.relpath(dataset / p, tmp_path) for p in reversed(rel_paths())]  # relative to the manifest's folder
    assert align_rows(rel, mindex, "x").tolist() == list(reversed(range(len(mindex))))


def test_rows_and_images_that_do_not_match_are_named_in_one_line(tmp_path, dataset):
    rows = rel_paths()
    rows[3] = "zed/1.png"  # ann/3.png has no row, zed/1.png is no image
    rows.append("zed/2.png")
    npy, _ = write_npy(tmp_path / "x", dataset, rel_paths() + ["ann/0.png"])
    (tmp_path / "x" / "feats.paths.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        purify_from_embeddings(dataset, npy, tmp_path / "clean", silent=True)
    message = str(err.value)
    assert "\n" not in message
    assert "1 of 26 images have no embedding (first: ann/3.png)" in message
    assert "2 of 27 rows name no image of the dataset (first: row 4, 'zed/1.png')" in message
    assert not (tmp_path / "clean").exists()
    (tmp_path / "x" / "feats.paths.txt").write_text("\n".join(rel_paths()) + "\n")
    with pytest.raises(DataError, match=r"feats.npy have 27 rows but .*feats.paths.txt lists 26 paths"):
        purify_from_embeddings(dataset, npy, tmp_path / "clean", silent=True)
    (tmp_path / "x" / "feats.paths.txt").write_text("\n".join(rel_paths() + ["./ann/0.png"]) + "\n")
    with pytest.raises(DataError, match=r"rows 1 and 27 of embeddings .* both name image ann/0.png"):
        purify_from_embeddings(dataset, npy, tmp_path / "clean", silent=True)


def test_unreadable_layouts_are_one_line_errors(tmp_path, dataset, monkeypatch):
    index = open_dataset(dataset, silent=True)
    np.save(tmp_path / "bare.npy", matrix(rel_paths()))
    with pytest.raises(DataError, match=r"no bare.json beside them .* pass --paths FILE .* bare.paths.txt"):
        read_embeddings(tmp_path / "bare.npy", index)
    (tmp_path / "nopath.csv").write_text("file,e0\nann/0.png,1\n")
    with pytest.raises(DataError, match="have no 'path' column"):
        read_embeddings(tmp_path / "nopath.csv", index)
    (tmp_path / "words.csv").write_text("path,e0\nann/0.png,abc\n")
    with pytest.raises(DataError, match="cannot read embeddings .*words.csv"):
        read_embeddings(tmp_path / "words.csv", index)
    with pytest.raises(DataError, match="goes with an .npy array"):
        read_embeddings(tmp_path / "words.csv", index, paths=tmp_path / "bare.npy")
    with pytest.raises(DataError, match="expected a directory written by cleanface embed"):
        read_embeddings(tmp_path / "words.txt", index)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"needs pyarrow, which is not installed: pip install pyarrow"):
        read_embeddings(tmp_path / "x.parquet", index)


def test_collapsed_embeddings_are_refused_without_a_run_too(tmp_path, dataset):
    folder = write_embed_dir(tmp_path / "emb", dataset)
    rng = np.random.default_rng(0)
    common = rng.normal(size=D)
    np.save(folder / "embeddings.npy", (common + 0.05 * rng.normal(size=(sum(COUNTS.values()), D))).astype(np.float32))
    with pytest.raises(SanityError, match="collapsed"):
        purify_from_embeddings(dataset, folder, tmp_path / "clean", silent=True)
    assert not (tmp_path / "clean").exists() and not (tmp_path / ".clean.partial").exists()


# -- the command line -----------------------------------------------------------------------------
def test_cli_without_a_run_and_its_usage_errors(tmp_path, dataset):
    from click.testing import CliRunner

    from cleanface_cli.main import cli

    runner = CliRunner()
    npy, listing = write_npy(tmp_path / "given", dataset, shuffled(dataset), beside=False)
    result = runner.invoke(cli, ["purify", str(dataset), "--embeddings", str(npy), "--paths", str(listing), "--out", str(tmp_path / "clean"),
                                 "--silent", "--no-report", "--k", "2"])
    assert result.exit_code == 0, result.output
    assert "26 -> 24" in result.output and "k-means" in result.output
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["subcenters"]["k"] == 2 and summary["actions"]["relabel"] == 1
    assert json.loads((tmp_path / "clean" / "run_info.json").read_text())["paths"] == str(listing)

    missing = runner.invoke(cli, ["purify", str(dataset), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "without RUN, purify needs --embeddings" in missing.output
    too_many = runner.invoke(cli, ["purify", str(dataset), str(dataset), str(dataset), "--out", str(tmp_path / "x")])
    assert too_many.exit_code == 2 and "expected RUN DATA, or DATA --embeddings E; got 3 arguments" in too_many.output
    k_with_run = runner.invoke(cli, ["purify", str(tmp_path / "given"), str(dataset), "--out", str(tmp_path / "x"), "--k", "2"])
    assert k_with_run.exit_code == 2 and "--k applies only without RUN" in k_with_run.output
    file_run = runner.invoke(cli, ["purify", str(npy), str(dataset), "--out", str(tmp_path / "x")])
    assert file_run.exit_code == 2 and "is not a directory" in file_run.output
    mismatch = runner.invoke(cli, ["purify", str(dataset), "--embeddings", str(npy), "--out", str(tmp_path / "y"), "--silent"])
    assert mismatch.exit_code == 1 and "--paths FILE" in mismatch.output and "Traceback" not in mismatch.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    usage = runner.invoke(cli, ["purify", "--help"]).output
    assert "[RUN] DATA" in usage and "--paths" in usage and "--k" in usage
