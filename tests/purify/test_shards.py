"""Purify's passes on a local Dask cluster of 2 worker processes give the decisions of the single process, image for image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cleanface.errors import ConfigError
from cleanface.purify import shards
from cleanface.purify.decisions import decide
from cleanface.purify.settings import PurifySettings

pytest.importorskip("distributed")

D, PEOPLE, PER = 32, 80, 12
ARRAYS = ("action", "reason", "new_label", "angle", "cos", "nearest", "dominant", "loo_angle", "noise_score", "split_group",
          "best_other", "best_other_angle", "outlier_group")


def make_set(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memory-mapped float16 embeddings of 80 identities x 12 (10% wrong labels, a merged pair, a split identity), labels, K=3 sub-centers."""
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(PEOPLE + 5, D))
    labels = np.repeat(np.arange(PEOPLE), PER)
    person = labels.copy()
    person[labels == 1] = 0  # identity 1 is identity 0 under a second name
    person[(labels == 2) & (np.arange(len(labels)) % PER >= 6)] = PEOPLE  # identity 2 holds two people
    wrong = rng.random(len(labels)) < 0.1
    person[wrong] = rng.integers(0, PEOPLE + 5, int(wrong.sum()))
    x = axes[person] + 0.45 * rng.normal(size=(len(labels), D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[7] = np.nan  # a broken embedding
    x[101::97] = x[100::97][: len(x[101::97])] + 1e-3 * rng.normal(size=(len(x[101::97]), D))  # near-duplicates of the row before
    path = folder / "embeddings.npy"
    np.save(path, x.astype(np.float16))
    centers = axes[:PEOPLE, None, :] + 0.3 * rng.normal(size=(PEOPLE, 3, D))
    return np.load(path, mmap_mode="r"), labels, (centers / np.linalg.norm(centers, axis=2, keepdims=True)).astype(np.float32)


def same(a, b) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.merges, a.splits, a.calibration, a.identity_calibration) == (b.merges, b.splits, b.calibration, b.identity_calibration)
    np.testing.assert_array_equal(a.duplicate_pairs, b.duplicate_pairs)


@pytest.fixture(scope="module")
def cluster():
    with shards.connect(workers=2) as runner:
        yield runner


def test_a_local_cluster_decides_like_the_single_process(tmp_path: Path, cluster, monkeypatch) -> None:
    emb, labels, centers = make_set(tmp_path)
    settings = PurifySettings(split=True)
    reference = decide(emb, labels, centers, settings)
    assert reference.calibration["used"] and (reference.action != 0).sum() > 50  # the rules had work to do
    assert reference.merges and reference.identity_calibration["split"]["used"]  # the merge search and the 2-means passes ran
    same(decide(emb, labels, centers, settings, runner=cluster), reference)

    # many blocks: 10 of 96 rows each pass, the small arrays spilled to files for the workers, not sent inline
    monkeypatch.setattr(shards, "INLINE_BYTES", 1024)
    cluster.max_block = 96
    try:
        many = decide(emb, labels, centers, settings, runner=shards.LocalRunner(max_block=96))
        same(decide(emb, labels, centers, settings, runner=cluster), many)
        np.testing.assert_array_equal(many.action, reference.action)  # here the block size moves no decision either
    finally:
        cluster.max_block = None
    assert not list(Path(cluster.spill_dir).iterdir())  # each pass removed what it spilled


def test_the_searches_on_the_workers_find_what_one_index_finds(tmp_path: Path, cluster) -> None:
    emb, labels, centers = make_set(tmp_path)
    settings = PurifySettings(exact_below=64)  # IVF indexes of the samples (float16) and of the sub-centers, as at scale
    reference = decide(emb, labels, centers, settings)
    assert reference.faiss["samples"].startswith("IVF32,SQfp16") and reference.faiss["subcenters"].startswith("IVF8,Flat")
    assert len(reference.duplicate_pairs) >= 8 and (reference.best_other >= 0).sum() > 50
    spread = decide(emb, labels, centers, settings, runner=cluster)
    same(spread, reference)
    np.testing.assert_array_equal(spread.duplicate_cos, reference.duplicate_cos)
    assert spread.faiss == reference.faiss


def test_an_in_memory_array_reaches_the_workers_by_file(cluster, monkeypatch) -> None:
    monkeypatch.setattr(shards, "INLINE_BYTES", 16)
    values = np.arange(1000, dtype=np.float64)
    parts = list(cluster.imap(_block_sum, shards.blocks(1000, 300), {"values": values}, scale=2.0))
    assert parts == [2.0 * values[lo:hi].sum() for lo, hi in shards.blocks(1000, 300)]


def _block_sum(lo: int, hi: int, a: dict, scale: float) -> float:
    return float(scale * np.asarray(a["values"][lo:hi]).sum())


def test_without_dask_the_error_names_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r"pip install 'cleanface\[distributed\]'"):
        with shards.connect(workers=2):
            pass


def test_a_scheduler_that_does_not_answer_is_one_line() -> None:
    with pytest.raises(ConfigError, match="no Dask scheduler answered at tcp://127.0.0.1:9"):
        with shards.connect("tcp://127.0.0.1:9"):
            pass


def test_cli_purify_with_workers_writes_the_same_decisions(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cleanface_cli.main import cli
    from tests.purify.test_apply import make_clean

    make_clean(tmp_path)  # the dataset and its embeddings (and a purify output we do not use)
    outputs = {}
    for name, extra in (("alone", []), ("cluster", ["--workers", "2"])):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["purify", str(tmp_path / "noisy"), "--embeddings", str(tmp_path / "emb.npy"), "--out", str(out),
                                          "--no-report", "--silent", *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = out
    assert (outputs["alone"] / "decisions.csv").read_bytes() == (outputs["cluster"] / "decisions.csv").read_bytes()
    assert (outputs["alone"] / "summary.json").read_bytes() == (outputs["cluster"] / "summary.json").read_bytes()
    assert json.loads((outputs["cluster"] / "run_info.json").read_text())["runner"]["workers"] == 2
