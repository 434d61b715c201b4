"""The decode-once cache, FaceDataset, make_loader and CachedBatches."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cleanface.data.cache as cache_mod
import cleanface.data.torch_dataset as td
from cleanface.data.cache import DecodeCache, cache_key, default_cache_root
from cleanface.data.folder import read_folder
from cleanface.data.images import decode_image, to_tensor
from cleanface.data.torch_dataset import CachedBatches, FaceDataset, make_loader
from cleanface.errors import ConfigError, DataError


@pytest.fixture
def folder(tmp_path):
    """4 identities x 5 random 40x40 images; one JPEG truncated (valid header, broken data)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in range(4):
        (root / f"p{c}").mkdir(parents=True)
        for j in range(5):
            arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"p{c}" / f"{j}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "p2" / "9_broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return root


@pytest.fixture
def index(folder):
    return read_folder(folder)


def _broken(index) -> int:
    return next(i for i in range(len(index)) if index.paths[i].endswith("9_broken.jpg"))


def test_build_decodes_everything_once_and_records_failures(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path / "c", size=24, crop=32, silent=True)
    bad = _broken(index)
    assert cache.images.shape == (len(index), 24, 24, 3)
    assert cache.valid.sum() == len(index) - 1 and not cache.valid[bad]
    assert len(cache.bad_files) == 1 and cache.bad_files[0].location == index.location(bad)
    for i in np.flatnonzero(cache.valid):
        assert np.array_equal(cache[i], decode_image(index.read_bytes(i), size=24, crop=32))
    assert np.array_equal(cache.batch(np.array([5, 1, 3])), np.stack([cache[5], cache[1], cache[3]]))
    assert cache.path.name == cache_key(index, 24, 32) and (cache.path / "meta.json").is_file()
    assert not list((tmp_path / "c").glob(".*partial"))


def test_second_use_reads_the_cache_without_decoding(index, tmp_path, monkeypatch):
    DecodeCache.build(index, tmp_path / "c", size=16, crop=None, silent=True)

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "_decode_many", no_decode)
    monkeypatch.setattr(td, "decode_image", no_decode)
    cache = DecodeCache.build(index, tmp_path / "c", size=16, crop=None, silent=True)
    assert DecodeCache.open(index, tmp_path / "c", size=16, crop=None).path == cache.path
    dataset = FaceDataset(index, size=16, cache=cache)
    assert len(dataset) == len(index) - 1 and dataset.excluded == 1
    seen = [dataset[k][2] for k in range(len(dataset))]
    assert _broken(index) not in seen
    batches = list(CachedBatches(cache, index.labels, batch_size=8, seed=0))
    assert sum(len(b[2]) for b in batches) == len(index) - 1


def test_another_crop_size_or_label_set_gets_another_cache(index, tmp_path):
    a = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    b = DecodeCache.build(index, tmp_path, size=16, crop=24, silent=True)
    c = DecodeCache.build(index, tmp_path, size=20, crop=24, silent=True)
    relabelled = index.with_labels(index.labels[::-1].copy(), index.names)
    assert len({a.path, b.path, c.path, tmp_path / cache_key(relabelled, 16, None)}) == 4
    assert not np.array_equal(a.images, b.images)
    with pytest.raises(DataError, match="no complete decode cache"):
        DecodeCache.open(relabelled, tmp_path, size=16, crop=None)
    assert DecodeCache.exists(index, tmp_path, size=16, crop=24)
    assert not DecodeCache.exists(relabelled, tmp_path, size=16, crop=24)


def test_interrupted_build_resumes_where_it_stopped(index, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_CHUNK", 2)
    monkeypatch.setattr(cache_mod, "FLUSH_EVERY", 4)
    real = cache_mod._decode_many
    calls = []

    def interrupted(index_, ids, size, crop):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(ids.tolist())
        return real(index_, ids, size, crop)

    monkeypatch.setattr(cache_mod, "_decode_many", interrupted)
    with pytest.raises(KeyboardInterrupt):
        DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    partial = tmp_path / f".{cache_key(index, 16, None)}.partial"
    assert partial.is_dir() and not (tmp_path / cache_key(index, 16, None)).exists()
    done_before = int((np.fromfile(partial / "status.u8", dtype=np.uint8) > 0).sum())
    assert done_before >= 8  # two flushes of 4 images survived

    resumed = []

    def counting(index_, ids, size, crop):
        resumed.extend(ids.tolist())
        return real(index_, ids, size, crop)

    monkeypatch.setattr(cache_mod, "_decode_many", counting)
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    assert len(resumed) == len(index) - done_before
    fresh = DecodeCache.build(index, tmp_path / "fresh", size=16, crop=None, silent=True)
    assert np.array_equal(np.asarray(cache.images), np.asarray(fresh.images))
    assert np.array_equal(cache.valid, fresh.valid) and len(cache.bad_files) == 1


def test_a_second_builder_waits_for_the_first_and_uses_its_cache(index, tmp_path):
    import subprocess
    import sys
    import time

    from cleanface._atomic import RunLock

    final = tmp_path / cache_key(index, 16, None)
    code = (
        "import cleanface.data.cache as m; from cleanface.data.folder import read_folder\n"
        "real, n = m._decode_many, []\n"
        "m._decode_many = lambda *a: (n.append(1), real(*a))[1]\n"
        f"c = m.DecodeCache.build(read_folder({str(index.root)!r}), {str(tmp_path)!r}, size=16, crop=None, silent=True)\n"
        "print('decoded', len(n), 'images', len(c.images))"
    )
    with RunLock.beside(final):  # this process is the first builder
        second = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert second.poll() is None, second.communicate()  # it waits instead of failing
        first = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.split() == ["decoded", "0", "images", str(len(first.images))]  # it opened the first one's cache
    assert not list(tmp_path.glob(".*partial"))


def test_parallel_build_equals_serial_build(index, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_CHUNK", 4)  # several tasks for the worker pool
    serial = DecodeCache.build(index, tmp_path / "a", size=16, crop=None, silent=True)
    parallel = DecodeCache.build(index, tmp_path / "b", size=16, crop=None, workers=2, silent=True)
    assert np.array_equal(np.asarray(serial.images), np.asarray(parallel.images))
    assert np.array_equal(serial.valid, parallel.valid)


def test_default_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEANFACE_CACHE", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here"
    monkeypatch.delenv("CLEANFACE_CACHE")
    assert default_cache_root().parts[-2:] == (".cache", "cleanface")


def test_face_dataset_without_cache_decodes_and_names_bad_files(index):
    dataset = FaceDataset(index, size=16, crop=32)
    image, label, i = dataset[3]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert -1 <= image.min() and image.max() <= 1
    assert label == index.labels[3] and i == 3
    assert torch.equal(image, to_tensor(decode_image(index.read_bytes(3), size=16, crop=32)))
    with pytest.raises(DataError, match="9_broken.jpg"):
        dataset[_broken(index)]


def test_face_dataset_refuses_a_cache_of_another_size(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    with pytest.raises(ConfigError, match="another dataset or size"):
        FaceDataset(index, size=24, cache=cache)


def test_flips_follow_seed_and_epoch(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    a = FaceDataset(index, size=16, cache=cache, train=True, seed=3)
    b = FaceDataset(index, size=16, cache=cache, train=True, seed=3)
    plain = FaceDataset(index, size=16, cache=cache)
    flips = []
    for epoch in range(2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        row = []
        for k in range(len(a)):
            xa, xb, x0 = a[k][0], b[k][0], plain[k][0]
            assert torch.equal(xa, xb)
            assert torch.equal(xa, x0) or torch.equal(xa, x0.flip(-1))
            row.append(not torch.equal(xa, x0))
        flips.append(row)
    assert any(flips[0]) and not all(flips[0]) and flips[0] != flips[1]


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_order_depends_only_on_seed_and_epoch(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    dataset = FaceDataset(index, size=16, cache=cache, train=True)
    one = make_loader(dataset, batch_size=6, shuffle=True, workers=0, seed=7)
    two = make_loader(dataset, batch_size=6, shuffle=True, workers=2, seed=7)
    e0, e1 = _epoch(one, 0), _epoch(one, 1)
    assert [b[0].shape[0] for b in e0] == [6, 6, 6, 2]
    assert sorted(torch.cat([b[2] for b in e0]).tolist()) == np.flatnonzero(cache.valid).tolist()
    assert not torch.equal(torch.cat([b[2] for b in e0]), torch.cat([b[2] for b in e1]))
    for x, y in zip(e1, _epoch(two, 1)):  # workers do not change order or flips
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    assert all(torch.equal(b[1], torch.from_numpy(index.labels[b[2].numpy()])) for b in e0)
    drop = make_loader(dataset, batch_size=6, shuffle=False, workers=0, seed=7, drop_last=True)
    assert len(drop) == 3


def test_cached_batches_cover_each_sample_once_and_resume_mid_epoch(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    labels = (index.labels + 1) % index.num_identities  # any label set the caller wants
    batches = CachedBatches(cache, labels, batch_size=4, shuffle=True, seed=1, train=True)
    assert len(batches) == 5 and batches.excluded == 1
    full = list(batches.iter_from(2, 0))
    ids = torch.cat([b[2] for b in full])
    assert sorted(ids.tolist()) == np.flatnonzero(cache.valid).tolist()
    for images, lab, idx in full:
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32
        assert torch.equal(lab, torch.from_numpy(labels[idx.numpy()]))
        assert idx.tolist() == sorted(idx.tolist())
        for x, i in zip(images, idx.tolist()):
            ref = to_tensor(cache[i])
            assert torch.equal(x, ref) or torch.equal(x, ref.flip(-1))
    resumed = list(batches.iter_from(2, 3))
    assert len(resumed) == 2
    for x, y in zip(full[3:], resumed):
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    other = torch.cat([b[2] for b in batches.iter_from(3, 0)])
    assert not torch.equal(ids, other)
    fixed = CachedBatches(cache, labels, indices=np.array([0, 1, 2]), batch_size=2, shuffle=False, train=False)
    assert [b[2].tolist() for b in fixed] == [[0, 1], [2]]


def test_cached_batches_validate_inputs(index, tmp_path):
    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    with pytest.raises(ConfigError, match="labels must have shape"):
        CachedBatches(cache, index.labels[:3])
    with pytest.raises(ConfigError, match="indices must lie"):
        CachedBatches(cache, index.labels, indices=np.array([len(index)]))
    with pytest.raises(DataError, match="no usable samples"):
        CachedBatches(cache, index.labels, indices=np.array([_broken(index)]))


def test_cache_pickles_without_its_pixels(index, tmp_path):
    import pickle

    cache = DecodeCache.build(index, tmp_path, size=16, crop=None, silent=True)
    cache.images  # noqa: B018  (opens the memmap)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 16 * 16 * 3 * len(index)
    assert np.array_equal(copy[4], cache[4])


def test_files_rewritten_in_place_get_a_new_cache(index, tmp_path):
    first = DecodeCache.build(index, tmp_path / "c", size=16, crop=None, silent=True)
    path = index.abspath(0)
    Image.fromarray(np.full((40, 40, 3), 7, dtype=np.uint8)).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    second = DecodeCache.build(index, tmp_path / "c", size=16, crop=None, silent=True)
    assert second.path != first.path
    assert np.all(second[0] == 7) and not np.all(first[0] == 7)
