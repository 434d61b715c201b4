"""Pair protocols: insightface .bin files (safely unpickled), LFW-format files, end-to-end evaluation."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleanface.data.synthetic import make_pairs, make_synthetic
from cleanface.errors import DataError
from cleanface.eval.pairs import evaluate, evaluate_embeddings, load_lfw_pairs, load_pairs

SIZE = 32


def _png(k: int) -> bytes:
    arr = np.full((8, 8, 3), k % 256, dtype=np.uint8)
    arr[0, 0] = (k * 7) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bins(pairs: int) -> tuple[list[bytes], list[bool]]:
    return [_png(k) for k in range(2 * pairs)], [p % 3 != 0 for p in range(pairs)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """6 identities x 4 PNG images of 32 px, with a single-fold LFW-format pairs file of 24 pairs."""
    root = tmp_path_factory.mktemp("eval")
    folder = make_synthetic(root / "faces", identities=6, per_identity=4, size=SIZE, seed=3, silent=True)
    pairs = make_pairs(folder, root / "pairsDevTest.txt", num_pairs=24, seed=1)
    return folder, pairs


@pytest.fixture(scope="module")
def backbone():
    import torch

    from cleanface.models import create_backbone

    torch.manual_seed(0)
    return create_backbone("compact", embedding_size=32, input_size=SIZE)


# -- .bin files -----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_array", [False, True])
def test_bin_round_trip(tmp_path, protocol, as_array):
    images, issame = _bins(20)
    stored = [np.frombuffer(b, dtype=np.uint8) for b in images] if as_array else images
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((stored, issame), protocol=protocol))
    a, b, same, fold = load_pairs(path)
    assert a == images[0::2] and b == images[1::2]
    assert all(type(x) is bytes for x in a + b)
    assert same.dtype == bool and same.tolist() == issame
    assert fold.tolist() == [p // 2 for p in range(20)]  # 10 contiguous blocks


def test_bin_of_python2_strings_is_read_as_bytes(tmp_path):
    # A protocol-2 pickle as Python 2 writes it: str items are BINSTRING opcodes.
    images, issame = _bins(3)
    body = b"\x80\x02(" + b"".join(b"T" + struct.pack("<i", len(x)) + x for x in images) + b"l("
    body += b"".join(b"\x88" if s else b"\x89" for s in issame) + b"l\x86."
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    a, b, same, _ = load_pairs(path)
    assert a == images[0::2] and b == images[1::2] and same.tolist() == issame


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_bin_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(marker), _png(1)], [True]), protocol=protocol))
    with pytest.raises(DataError, match=r"evil\.bin.*refusing to unpickle (posix|nt|os)\.system"):
        load_pairs(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(([_EvalEvil(), _png(1)], [True]), protocol=protocol))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        load_pairs(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"bins": []}, "expected a pickled \\(bins, issame_list\\)"),
        (([b"x"] * 3, [True]), "3 images for 1 pairs"),
        (([1, 2], [True]), "image 0 is a int"),
        (([b"x", b"y"], ["yes"]), "issame_list must be a list of booleans"),
        (([], []), "holds no pairs"),
    ],
)
def test_malformed_bin_is_refused(tmp_path, obj, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_truncated_bin_is_refused(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps(_bins(4))[:-40])
    with pytest.raises(DataError, match="cut.bin is not a readable insightface .bin"):
        load_pairs(path)


# -- LFW-format files -----------------------------------------------------------------------
def test_lfw_format_with_png_images(synthetic):
    folder, pairs = synthetic
    a, b, same, fold = load_pairs(pairs, folder)
    lines = pairs.read_text().split("\n")[1:25]
    assert len(a) == len(b) == 24 and same.sum() == 12
    for path_a, path_b, line in zip(a, b, lines):
        fields = line.split("\t")
        name_b, j = (fields[0], fields[2]) if len(fields) == 3 else (fields[2], fields[3])
        assert path_a == str(folder / fields[0] / f"{fields[0]}_{int(fields[1]):04d}.png")
        assert path_b == str(folder / name_b / f"{name_b}_{int(j):04d}.png")
        assert Path(path_a).is_file() and Path(path_b).is_file()
    # A single-fold file: each of 10 folds takes a block of the matched and of the mismatched pairs.
    assert sorted(set(fold.tolist())) == list(range(10))
    for k in range(10):
        assert same[fold == k].any() and (~same[fold == k]).any()


def _write_lfw(root: Path, files: list[str], text: str) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(len(rel)))
    (root / "pairs.txt").write_text(text)
    return root / "pairs.txt"


def test_extension_is_resolved_once_per_folder(tmp_path, monkeypatch):
    files = ["Ann/Ann_0001.jpg", "Ann/Ann_0002.JPEG", "Bob/Bob_0001.bmp", "Bob/Bob_0001.png", "Bob/Bob_0002.webp", "Bob/notes.txt"]
    text = "2\nAnn\t1\t2\nBob\t1\t2\n\nAnn\t1\tBob\t2\nBob\t1\tAnn\t2\n"
    pairs = _write_lfw(tmp_path, files, text)
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    a, b, same, _ = load_lfw_pairs(pairs, folds=2)
    assert [Path(x).name for x in a] == ["Ann_0001.jpg", "Bob_0001.png", "Ann_0001.jpg", "Bob_0001.png"]
    assert [Path(x).name for x in b] == ["Ann_0002.JPEG", "Bob_0002.webp", "Bob_0002.webp", "Ann_0002.JPEG"]
    assert same.tolist() == [True, True, False, False]
    assert sorted(Path(p).name for p in calls) == ["Ann", "Bob"]


def test_missing_image_names_the_path_and_line(tmp_path):
    pairs = _write_lfw(tmp_path, ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"], "1\nAnn\t1\t2\n\nAnn\t1\tCy\t4\n")
    with pytest.raises(DataError) as err:
        load_pairs(pairs)
    message = str(err.value)
    assert "line 4" in message and str(tmp_path / "Cy" / "Cy_0004.jpg") in message and "\n" not in message


def test_missing_pairs_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope.txt")


# -- evaluation -----------------------------------------------------------------------------
def test_evaluate_lfw_format_end_to_end(synthetic, backbone):
    folder, pairs = synthetic
    backbone.train()
    out = evaluate(backbone, pairs, images_root=folder, size=SIZE, batch_size=16)
    assert backbone.training  # mode restored
    assert out["pairs"] == str(pairs) and out["num_pairs"] == 24
    assert set(out) == {"pairs", "num_pairs", "accuracy", "accuracy_std", "threshold", "tar_at_far", "auc", "roc"}
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["accuracy_std"] <= 0.5
    assert -1 <= out["threshold"] <= 1 and 0 <= out["auc"] <= 1
    assert all(0 <= v <= 1 for v in out["tar_at_far"].values())
    assert out["roc"]["far"][0] == 0 and out["roc"]["tar"][-1] == 1


def test_bin_and_lfw_format_give_the_same_scores(synthetic, backbone, tmp_path):
    folder, pairs = synthetic
    a, b, same, _ = load_pairs(pairs, folder)
    bins = [Path(p).read_bytes() for pair in zip(a, b) for p in pair]
    path = tmp_path / "syn.bin"
    path.write_bytes(pickle.dumps((bins, same.tolist())))
    from_text = evaluate(backbone, pairs, images_root=folder, size=SIZE)
    from_bin = evaluate(backbone, path, size=SIZE)
    assert from_bin["pairs"] == str(path)
    assert from_bin["num_pairs"] == from_text["num_pairs"] == 24
    assert from_bin["auc"] == pytest.approx(from_text["auc"])
    assert from_bin["tar_at_far"] == pytest.approx(from_text["tar_at_far"])
    for key in ("far", "tar"):
        assert from_bin["roc"][key] == pytest.approx(from_text["roc"][key])


def test_evaluate_embeddings():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 64))
    same = np.arange(40) % 2 == 0
    b = np.where(same[:, None], 3 * a + 0.01 * rng.normal(size=a.shape), rng.normal(size=a.shape))
    out = evaluate_embeddings(a, b, same, folds=4)
    assert out["accuracy"] == 1.0 and out["auc"] == 1.0
    with pytest.raises(DataError, match="one shape"):
        evaluate_embeddings(a, b[:, :4], same)
    with pytest.raises(DataError, match="not finite"):
        evaluate_embeddings(np.zeros_like(a), b, same)


# -- the real LFW ---------------------------------------------------------------------------
def test_real_lfw_dev_test_pairs(lfw_root):
    a, b, same, fold = load_pairs(lfw_root / "pairsDevTest.txt", lfw_root)
    assert len(a) == len(b) == len(same) == 1000 and same.sum() == 500
    assert all(os.path.isfile(p) for p in set(a) | set(b))
    assert np.bincount(fold).tolist() == [100] * 10
    assert all(same[fold == k].sum() == 50 for k in range(10))


def test_real_lfw_ten_fold_pairs_keep_their_folds(lfw_root):
    a, b, same, fold = load_pairs(lfw_root / "pairs.txt", lfw_root)
    assert len(a) == 6000 and np.bincount(fold).tolist() == [600] * 10
    assert all(same[fold == k][:300].all() and not same[fold == k][300:].any() for k in range(10))
    assert all(os.path.isfile(p) for p in set(a[:600]) | set(b[:600]))
