"""Noise injection: rates, truth file against the folder, determinism, source untouched, CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cleanface.data.folder import read_folder
from cleanface.data.noise import NOISE_TYPES, TRUTH_FILE, align_truth, inject_noise, read_truth
from cleanface.data.synthetic import make_synthetic
from cleanface.errors import ConfigError, DataError
from cleanface_cli.main import cli


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("noise")
    src = make_synthetic(base / "src", identities=10, per_identity=8, size=16, seed=0, silent=True)
    outside = make_synthetic(base / "outside", identities=5, per_identity=6, size=16, seed=1, name_prefix="out", silent=True)
    return src, outside


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rates_types_and_truth_match_the_folder(faces, tmp_path):
    src, outside = faces
    before = snapshot(src)
    source = read_folder(src)
    result = inject_noise(source, tmp_path / "noisy", close_set=0.1, open_set=0.2, outside=read_folder(outside), merge_identities=1, split_identities=1, seed=3)
    n_open = round(0.2 * 80 / 0.8)  # 20 outside images added: 100 in all
    assert result.images == 100 and result.counts["open-set"] == n_open
    assert result.counts["close-set"] == 10 and result.counts["merged"] == 8 and result.counts["split"] == 4
    assert sum(result.counts.values()) == 100 and set(result.counts) == set(NOISE_TYPES)
    assert result.identities == 10  # one absorbed, one added by the split
    assert result.noise_rate == pytest.approx(42 / 100)

    truth = read_truth(result.truth)
    files = sorted(str(p.relative_to(result.out)) for p in result.out.rglob("*.png"))
    assert sorted(truth["path"].tolist()) == files
    folder_of = np.array([p.split("/")[0] for p in truth["path"]])
    assert np.array_equal(folder_of, truth["assigned_identity"])
    kind, true, assigned = truth["noise_type"], truth["true_identity"], truth["assigned_identity"]
    assert np.all(true[kind == "clean"] == assigned[kind == "clean"])
    assert np.all(true[kind == "close-set"] != assigned[kind == "close-set"])
    assert np.all(np.char.startswith(true[kind == "close-set"], "id_"))
    assert np.all(true[kind == "open-set"] == "outside")
    (kept, absorbed), = result.merges
    assert np.all(true[kind == "merged"] == absorbed) and np.all(assigned[kind == "merged"] == kept)
    assert absorbed not in set(assigned)
    (name, new), = result.splits
    assert new == f"{name}__split" and np.all(assigned[kind == "split"] == new) and np.all(true[kind == "split"] == name)
    assert np.array_equal(truth["is_noise"], kind != "clean")

    # every output image has the bytes of its source
    for rel, location in zip(truth["path"], truth["source"]):
        assert (result.out / rel).read_bytes() == Path(location).read_bytes()
    assert snapshot(src) == before

    index = read_folder(result.out)
    assert len(index) == 100 and not index.bad_files
    aligned = align_truth(truth, index)
    assert np.array_equal(aligned["assigned_identity"], np.array(index.names)[index.labels])


def test_same_seed_same_noise_other_seed_other_noise(faces, tmp_path):
    src, _ = faces
    source = read_folder(src)
    a = inject_noise(source, tmp_path / "a", close_set=0.25, seed=1)
    b = inject_noise(source, tmp_path / "b", close_set=0.25, seed=1)
    c = inject_noise(source, tmp_path / "c", close_set=0.25, seed=2)
    assert a.truth.read_text() == b.truth.read_text()
    assert a.truth.read_text() != c.truth.read_text()
    assert a.counts["close-set"] == 20 and a.counts["clean"] == 60


def test_links_by_default_copies_on_request(faces, tmp_path):
    src, _ = faces
    source = read_folder(src)
    linked = inject_noise(source, tmp_path / "l", close_set=0.1, seed=0)
    copied = inject_noise(source, tmp_path / "c", close_set=0.1, seed=0, copy=True)
    truth = read_truth(linked.truth)
    rel, location = truth["path"][0], truth["source"][0]
    assert os.path.samefile(linked.out / rel, location) or (linked.out / rel).is_symlink()
    assert not os.path.samefile(copied.out / rel, location) and not (copied.out / rel).is_symlink()


def test_refusals(faces, tmp_path):
    src, outside = faces
    source = read_folder(src)
    with pytest.raises(DataError, match="needs outside faces"):
        inject_noise(source, tmp_path / "x", open_set=0.1)
    small = read_folder(outside).subset(np.arange(3))
    with pytest.raises(DataError, match="needs 9 outside images but .* has 3"):
        inject_noise(source, tmp_path / "x", open_set=0.1, outside=small)
    with pytest.raises(DataError, match="shares"):
        inject_noise(source, tmp_path / "x", open_set=0.1, outside=source)
    with pytest.raises(ConfigError, match=r"close_set must be a fraction"):
        inject_noise(source, tmp_path / "x", close_set=1.5)
    with pytest.raises(ConfigError, match="need 12 identities"):
        inject_noise(source, tmp_path / "x", merge_identities=6)
    with pytest.raises(ConfigError, match="inside the source"):
        inject_noise(source, src / "noisy", close_set=0.1)
    assert not (tmp_path / "x").exists() and not (src / "noisy").exists()


def test_read_truth_rejects_other_files(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a noise truth file"):
        read_truth(bad)
    bad.write_text("path,true_identity,assigned_identity,noise_type,source\nx.png,a,a,weird,/x\n")
    with pytest.raises(DataError, match="line 2: unknown noise type 'weird'"):
        read_truth(bad)


def test_cli_inject_noise(faces, tmp_path):
    src, outside = faces
    result = CliRunner().invoke(
        cli,
        ["inject-noise", str(src), str(tmp_path / "n"), "--close-set", "0.1", "--open-set", "0.1", "--outside", str(outside), "--split-identities", "2", "--seed", "4", "--silent"],
    )
    assert result.exit_code == 0, result.output
    truth = read_truth(tmp_path / "n" / TRUTH_FILE)
    assert len(truth["path"]) == 89 and (truth["noise_type"] == "open-set").sum() == 9
    result = CliRunner().invoke(cli, ["inject-noise", str(src), str(tmp_path / "m"), "--open-set", "0.1", "--silent"])
    assert result.exit_code == 1 and "needs outside faces" in result.output
