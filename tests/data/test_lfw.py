"""LFW people and pairs lists, on hand-written files and on the real LFW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cleanface.data.lfw import image_path, lfw_index, pair_paths, read_pairs, read_people
from cleanface.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_people_single_list_and_folds(tmp_path):
    single = _write(tmp_path / "peopleDevX.txt", "2\nAnn_A\t3\nBob_B\t1\n")
    assert read_people(single) == [("Ann_A", 3), ("Bob_B", 1)]
    folds = _write(tmp_path / "people.txt", "2\n1\nAnn_A\t3\n2\nBob_B\t1\nCy\t2\n")
    assert read_people(folds) == [("Ann_A", 3), ("Bob_B", 1), ("Cy", 2)]


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("2\nAnn\t3\n", 2, "file ends"),
        ("1\nAnn\tx\n", 2, "image count must be an integer"),
        ("1\nAnn\t3\textra\n", 2, "expected 'name  n_images'"),
        ("1\nAnn\t0\n", 2, "at least 1"),
        ("1\nAnn\t3\nBob\t2\n", 3, "unexpected extra line"),
        ("two\nAnn\t3\n", 1, "count must be an integer"),
    ],
)
def test_people_malformed_lines(tmp_path, text, line, what):
    path = _write(tmp_path / "p.txt", text)
    with pytest.raises(DataError) as err:
        read_people(path)
    assert str(err.value).startswith(f"{path} line {line}: ") and what in str(err.value)


def test_pairs_dev_and_folds(tmp_path):
    dev = read_pairs(_write(tmp_path / "pairsDev.txt", "1\nAnn\t1\t2\nAnn\t1\tBob\t3\n"))
    assert dev.name1.tolist() == ["Ann", "Ann"] and dev.name2.tolist() == ["Ann", "Bob"]
    assert dev.n1.tolist() == [1, 1] and dev.n2.tolist() == [2, 3] and dev.same.tolist() == [True, False]
    assert dev.fold.tolist() == [0, 0] and dev.num_folds == 1
    folds = read_pairs(_write(tmp_path / "pairs.txt", "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t2\t3\nC\t1\tD\t4\n"))
    assert folds.fold.tolist() == [0, 0, 1, 1] and folds.same.tolist() == [True, False, True, False]
    p1, p2 = pair_paths(folds, tmp_path)
    assert p1[2] == str(tmp_path / "C" / "C_0002.jpg") and p2[3] == str(tmp_path / "D" / "D_0004.jpg")


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("1\nAnn\t1\tBob\t2\nAnn\t1\tBob\t3\n", 2, "expected a matched pair"),
        ("1\nAnn\t1\t2\nAnn\t1\t2\n", 3, "expected a mismatched pair"),
        ("1\nAnn\t1\t2\n", 2, "file ends"),
        ("1\nAnn\t1\tz\nAnn\t1\tBob\t3\n", 2, "image number must be an integer"),
        ("1 2 3\n", 1, "expected 'n' or 'folds n'"),
    ],
)
def test_pairs_malformed_lines(tmp_path, text, line, what):
    path = _write(tmp_path / "pairs.txt", text)
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path} line {line}: ") and what in str(err.value)


def test_lfw_index_on_a_small_tree(tmp_path):
    for name, n in [("Ann", 3), ("Bob", 1)]:
        (tmp_path / "img" / name).mkdir(parents=True)
        for k in range(1, n + 1):
            (tmp_path / "img" / image_path(name, k)).write_bytes(b"x")
    (tmp_path / "img" / image_path("Ann", 3)).unlink()
    people = _write(tmp_path / "people.txt", "2\nAnn\t3\nBob\t1\n")
    index = lfw_index(tmp_path / "img", people, min_images=2)
    assert index.names == ["Ann"] and list(index.paths) == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"]
    assert [b.reason for b in index.bad_files] == ["listed in the people file but missing"]
    with pytest.raises(DataError, match="at least 5 images"):
        lfw_index(tmp_path / "img", people, min_images=5)


# -- the real LFW -----------------------------------------------------------------
def test_real_devtrain_min4(lfw_root):
    index = lfw_index(lfw_root, lfw_root / "peopleDevTrain.txt", min_images=4)
    assert index.num_identities == 430 and len(index) == 4964 and index.bad_files == []
    assert index.counts().min() >= 4
    assert index.read_bytes(0)[:2] == b"\xff\xd8"


def test_real_people_lists(lfw_root):
    train = read_people(lfw_root / "peopleDevTrain.txt")
    test = read_people(lfw_root / "peopleDevTest.txt")
    assert (len(train), sum(n for _, n in train)) == (4038, 9525)
    assert (len(test), sum(n for _, n in test)) == (1711, 3708)
    assert not {n for n, _ in train} & {n for n, _ in test}
    assert len(read_people(lfw_root / "people.txt")) > 5000


def test_real_pairs_files_and_paths_exist(lfw_root):
    dev = read_pairs(lfw_root / "pairsDevTest.txt")
    assert len(dev) == 1000 and int(dev.same.sum()) == 500 and dev.num_folds == 1
    assert np.all(dev.name1[dev.same] == dev.name2[dev.same])
    view2 = read_pairs(lfw_root / "pairs.txt")
    assert len(view2) == 6000 and view2.num_folds == 10
    assert np.bincount(view2.fold).tolist() == [600] * 10
    assert np.bincount(view2.fold[view2.same]).tolist() == [300] * 10
    p1, p2 = pair_paths(dev, lfw_root)
    assert all(Path(p).is_file() for p in p1[::50] + p2[::50])


def test_read_folder_on_symlinked_lfw_identities(lfw_root, tmp_path):
    from cleanface.data.folder import read_folder

    images = lfw_root / "images_deepfunneled"
    names = ["Aaron_Peirsol", "Abdullah_Gul", "Zico"]
    for name in names:
        (tmp_path / name).symlink_to(images / name, target_is_directory=True)
    refused = pytest.raises(DataError, match="outside the dataset root")
    with refused:
        read_folder(tmp_path)
    index = read_folder(tmp_path, follow_symlinks=True)
    assert index.names == names
    assert index.counts().tolist() == [len(list((images / n).glob("*.jpg"))) for n in names]
