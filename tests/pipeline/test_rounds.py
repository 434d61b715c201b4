"""Purify in rounds: round 2 re-trains on round 1's kept images and scores the whole input against them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cleanface.data.index import DatasetIndex
from cleanface.data.noise import inject_noise
from cleanface.data.open import open_dataset
from cleanface.data.synthetic import make_synthetic
from cleanface.errors import CleanfaceError, ConfigError
from cleanface.pipeline.rounds import purify_in_rounds, round_train_settings
from cleanface.training.trainer import train_subcenter

SIZE = 32


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rounds")
    clean = make_synthetic(root / "clean", identities=6, per_identity=12, size=SIZE, seed=3, silent=True)
    noisy = inject_noise(open_dataset(clean, silent=True), root / "noisy", close_set=0.15, seed=0).out
    run = train_subcenter(noisy, root / "run", k=2, input_size=SIZE, embedding_size=32, batch_size=16, epochs=3, lr=0.05,
                          silent=True, device="cpu", cache_dir=str(root / "cache"), seed=0)
    return Path(noisy), run


def _actions(out: Path) -> dict[str, str]:
    import csv

    with open(out / "decisions.csv", newline="") as handle:
        return {r["location"]: r["action"] for r in csv.DictReader(handle) if r["index"]}


def test_two_rounds_retrain_on_the_kept_images_and_keep_every_step(noisy_run, tmp_path):
    noisy, run = noisy_run
    out = purify_in_rounds(run, noisy, tmp_path / "clean", rounds=2, truth=noisy / "noise_truth.csv", silent=True)
    rounds = out / "rounds"
    assert (out / "COMPLETE").is_file() and (rounds / "round-1" / "COMPLETE").is_file() and (rounds / "run-2" / "COMPLETE").is_file()
    assert not Path(f"{out}.rounds").exists()  # moved into the output when done
    first = _actions(rounds / "round-1")
    kept = DatasetIndex.load(rounds / "kept-1.npz")
    members = {loc for loc, a in first.items() if a in ("keep", "merge", "dedup")}
    assert {kept.location(i) for i in range(len(kept))} == members and len(members) < len(first)
    assert list(kept.names) == list(open_dataset(noisy, silent=True).names)  # every identity name, so the new run matches the input
    second = json.loads((rounds / "run-2" / "config.json").read_text())
    assert second["data"].endswith("kept-1.npz") and second["images_used"] == len(members)
    same = {k: v for k, v in round_train_settings(run).items() if k not in ("cache_dir",)}
    assert {k: round_train_settings(rounds / "run-2")[k] for k in same} == same  # the given run's settings
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["used"] and summary["calibration"]["centre_members"] == len(members)
    info = json.loads((out / "run_info.json").read_text())
    assert info["run"].endswith("run-2")
    assert info["reference"].endswith("round-1")
    assert set(_actions(out)) == set(first)  # the whole input is scored again, not only the kept images


def test_one_round_is_plain_purify_and_bad_counts_are_refused(noisy_run, tmp_path):
    noisy, run = noisy_run
    out = purify_in_rounds(run, noisy, tmp_path / "one", rounds=1, silent=True)
    assert (out / "COMPLETE").is_file() and not (out / "rounds").exists()
    for bad in (0, 6):
        with pytest.raises(ConfigError, match="rounds must lie within"):
            purify_in_rounds(run, noisy, tmp_path / f"bad{bad}", rounds=bad, silent=True)
    assert np.all([not (tmp_path / f"bad{b}").exists() for b in (0, 6)])


def test_a_non_empty_output_is_refused_before_any_round(noisy_run, tmp_path):
    noisy, run = noisy_run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    with pytest.raises(CleanfaceError, match="is not empty; pass --overwrite"):
        purify_in_rounds(run, noisy, tmp_path / "taken", rounds=2, silent=True)
    assert not (tmp_path / "taken.rounds").exists() and (tmp_path / "taken" / "x.txt").read_text() == "mine"
