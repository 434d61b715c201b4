"""Synthetic faces: layout, determinism, nuisance on global colour, disjoint sets, pairs, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cleanface.data.folder import read_folder
from cleanface.data.lfw import read_pairs
from cleanface.data.synthetic import make_pairs, make_synthetic
from cleanface.errors import CleanfaceError, ConfigError, DataError
from cleanface_cli.main import cli


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("s") / "faces", identities=6, per_identity=5, size=32, seed=0, silent=True)


def test_layout_and_image_format(small):
    index = read_folder(small)
    assert index.names == [f"id_{k:04d}" for k in range(6)]
    assert len(index) == 30 and not index.bad_files
    assert index.paths[0] == "id_0000/id_0000_0001.png" and index.paths[4] == "id_0000/id_0000_0005.png"
    with Image.open(small / "id_0003" / "id_0003_0002.png") as img:
        assert img.mode == "RGB" and img.size == (32, 32)
    assert (small / "synthetic.json").is_file()


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again = make_synthetic(tmp_path / "again", identities=6, per_identity=5, size=32, seed=0, silent=True)
    other = make_synthetic(tmp_path / "other", identities=6, per_identity=5, size=32, seed=1, silent=True)
    assert digest(again) == digest(small)
    assert digest(other) != digest(small)


def test_images_of_one_identity_differ(small):
    arrays = [np.asarray(Image.open(small / "id_0001" / f"id_0001_{j:04d}.png"), dtype=np.int16) for j in range(1, 6)]
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.abs(arrays[a] - arrays[b]).mean() > 5


def test_mean_colour_does_not_identify_people(tmp_path):
    """A nearest-class-mean classifier on mean RGB must stay under 50% on 100 identities."""
    per = 10
    folder = make_synthetic(tmp_path / "f", identities=100, per_identity=per, size=32, seed=5, silent=True)
    index = read_folder(folder)
    means = np.stack([np.asarray(Image.open(index.abspath(i)), dtype=np.float64).reshape(-1, 3).mean(0) for i in range(len(index))])
    means = means.reshape(100, per, 3)
    train, test = means[:, : per // 2], means[:, per // 2 :]
    centres = train.mean(axis=1)  # (100, 3)
    dist = ((test[:, :, None, :] - centres[None, None]) ** 2).sum(-1)  # (100, per/2, 100)
    accuracy = (dist.argmin(-1) == np.arange(100)[:, None]).mean()
    assert accuracy < 0.5
    # sanity check of the classifier itself: colours constant per identity are all recognised
    fake = np.repeat(centres[:, None], per // 2, axis=1)
    assert (((fake[:, :, None] - centres[None, None]) ** 2).sum(-1).argmin(-1) == np.arange(100)[:, None]).mean() == 1.0


def test_held_out_sets_are_disjoint(tmp_path, small):
    held = make_synthetic(tmp_path / "held", identities=3, per_identity=2, size=32, seed=9, name_prefix="heldout", silent=True)
    later = make_synthetic(tmp_path / "later", identities=3, per_identity=2, size=32, seed=0, first_identity=6, silent=True)
    names = [set(read_folder(f).names) for f in (small, held, later)]
    assert names[1] == {"heldout_0000", "heldout_0001", "heldout_0002"}
    assert names[2] == {"id_0006", "id_0007", "id_0008"}
    assert not (names[0] & names[1]) and not (names[0] & names[2])
    # same name under another seed is another person
    other = make_synthetic(tmp_path / "o", identities=1, per_identity=1, size=32, seed=9, silent=True)
    assert (other / "id_0000" / "id_0000_0001.png").read_bytes() != (small / "id_0000" / "id_0000_0001.png").read_bytes()


def test_bad_settings_are_refused(tmp_path, small):
    with pytest.raises(ConfigError, match="at least 1"):
        make_synthetic(tmp_path / "x", identities=0, silent=True)
    with pytest.raises(ConfigError, match="at least 16"):
        make_synthetic(tmp_path / "x", size=8, silent=True)
    with pytest.raises(ConfigError, match="name_prefix"):
        make_synthetic(tmp_path / "x", name_prefix="a/b", silent=True)
    with pytest.raises(CleanfaceError, match="not empty"):
        make_synthetic(small, identities=1, per_identity=1, size=16, silent=True)


def test_pairs_file_is_lfw_readable_and_points_at_real_images(small, tmp_path):
    out = make_pairs(small, tmp_path / "pairs.txt", num_pairs=20, seed=0)
    assert out.read_text().splitlines()[0] == "10"
    pairs = read_pairs(out)
    assert len(pairs) == 20 and pairs.same.sum() == 10 and pairs.num_folds == 1
    assert np.all(pairs.name1[pairs.same] == pairs.name2[pairs.same])
    assert np.all(pairs.name1[~pairs.same] != pairs.name2[~pairs.same])
    keys = set()
    for a, i, b, j in zip(pairs.name1, pairs.n1, pairs.name2, pairs.n2):
        assert (small / a / f"{a}_{i:04d}.png").is_file() and (small / b / f"{b}_{j:04d}.png").is_file()
        assert (a, i) != (b, j)
        keys.add((a, int(i), b, int(j)))
    assert len(keys) == 20
    assert make_pairs(small, tmp_path / "p2.txt", num_pairs=20, seed=0).read_text() == out.read_text()
    ten = read_pairs(make_pairs(small, tmp_path / "p3.txt", num_pairs=40, seed=1, folds=2))
    assert ten.num_folds == 2 and len(ten) == 40


def test_pairs_refuse_impossible_requests(small, tmp_path):
    with pytest.raises(DataError, match="distinct matched pairs"):
        make_pairs(small, tmp_path / "p.txt", num_pairs=200, seed=0)  # 6 x C(5,2) = 60 matched at most
    with pytest.raises(ConfigError, match="num_pairs"):
        make_pairs(small, tmp_path / "p.txt", num_pairs=1, seed=0)
    odd = tmp_path / "odd"
    (odd / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(odd / "a" / "face.png")
    with pytest.raises(DataError, match="<identity>_<number>"):
        make_pairs(odd, tmp_path / "p.txt", num_pairs=2, seed=0)


def test_cli_make_synthetic_and_pairs(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["make-synthetic", str(tmp_path / "out"), "--identities", "3", "--per-identity", "3", "--size", "16", "--pairs", "6", "--silent"])
    assert result.exit_code == 0, result.output
    assert len(read_folder(tmp_path / "out")) == 9 and len(read_pairs(tmp_path / "out" / "pairs.txt")) == 6
    result = runner.invoke(cli, ["make-pairs", str(tmp_path / "out"), str(tmp_path / "p.txt"), "--num-pairs", "4", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert len(read_pairs(tmp_path / "p.txt")) == 4
    result = runner.invoke(cli, ["make-synthetic", str(tmp_path / "out"), "--identities", "1", "--silent"])
    assert result.exit_code == 1 and "not empty" in result.output


@pytest.mark.parametrize("command", ["make-synthetic", "make-pairs", "inject-noise"])
def test_commands_have_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and len(result.output) > 200
    command_obj = cli.commands[command]
    assert command_obj.help and all(p.help for p in command_obj.params if hasattr(p, "help") and p.param_type_name == "option")
