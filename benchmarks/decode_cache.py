"""Decoding LFW JPEGs on the fly versus reading batches from the decode-once cache.

For each setting (64 px from a 128 px centre crop, and 112 px from a 144 px crop of the
250 x 250 deep-funneled images) it measures, in images per second:

* ``decode``: read + :func:`cleanface.data.images.decode_image`, one process;
* ``build``: building the :class:`~cleanface.data.cache.DecodeCache` (``--workers`` processes);
* ``dataset``: :class:`FaceDataset` over the cache through :func:`make_loader` (workers 0),
  the per-item path, with flips and normalisation;
* ``dataset_decode``: the same without a cache (decoding per item);
* ``cached_batches``: :class:`CachedBatches` over the cache (sorted memmap batches,
  flips and normalisation in torch), the fast path.

Subsets: ``devtrain4`` (DevTrain people with at least 4 images: 430 identities, 4,964
images) or ``all`` (13,233). Prints a table and writes JSON to ``--out``.

Usage::

    python benchmarks/decode_cache.py --lfw ../shared/data/lfw [--subset devtrain4|all] [--workers 2] [--out bench-out/decode_cache.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = ({"size": 64, "crop": 128}, {"size": 112, "crop": 144})


def _index(lfw: Path, subset: str):
    from cleanface.data.folder import read_folder
    from cleanface.data.lfw import lfw_index

    images = lfw / "images_deepfunneled"
    if subset == "devtrain4":
        return lfw_index(images, lfw / "peopleDevTrain.txt", min_images=4)
    return read_folder(images)


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def measure(index, size: int, crop: int, workers: int, batch_size: int, cache_root: Path) -> dict:
    from cleanface.data.cache import DecodeCache
    from cleanface.data.images import decode_image
    from cleanface.data.torch_dataset import CachedBatches, FaceDataset, make_loader

    n = len(index)
    result: dict = {"size": size, "crop": crop, "images": n}

    start = time.perf_counter()
    for i in range(n):
        decode_image(index.read_bytes(i), size=size, crop=crop)
    result["decode_images_per_s"] = _rate(n, time.perf_counter() - start)

    start = time.perf_counter()
    cache = DecodeCache.build(index, cache_root, size=size, crop=crop, workers=workers, silent=True)
    result["build_images_per_s"] = _rate(n, time.perf_counter() - start)
    result["build_workers"] = workers
    result["cache_bytes"] = int((cache.path / "images.u8").stat().st_size)

    def epoch(loader) -> float:
        loader.set_epoch(1)
        count = 0
        start = time.perf_counter()
        for images, labels, idx in loader:
            count += len(idx)
            images.sum()  # touch the data as a model would
        return _rate(count, time.perf_counter() - start)

    result["dataset_images_per_s"] = epoch(make_loader(FaceDataset(index, size=size, crop=crop, train=True, cache=cache), batch_size=batch_size, shuffle=True, workers=0, seed=0))
    sub = index.subset(np.arange(min(n, 1000)))
    result["dataset_decode_images_per_s"] = epoch(make_loader(FaceDataset(sub, size=size, crop=crop, train=True), batch_size=batch_size, shuffle=True, workers=0, seed=0))
    result["dataset_decode_sampled_images"] = len(sub)
    batches = CachedBatches(cache, index.labels, batch_size=batch_size, shuffle=True, seed=0, train=True)
    result["cached_batches_images_per_s"] = epoch(batches)
    result["speedup_cached_batches_vs_decode"] = round(result["cached_batches_images_per_s"] / result["decode_images_per_s"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default="../shared/data/lfw", help="LFW folder holding images_deepfunneled/ and peopleDevTrain.txt")
    parser.add_argument("--subset", choices=("devtrain4", "all"), default="devtrain4")
    parser.add_argument("--workers", type=int, default=0, help="decode processes for the cache build")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a temporary folder, removed afterwards)")
    parser.add_argument("--out", default="bench-out/decode_cache.json")
    args = parser.parse_args()

    lfw = Path(args.lfw)
    if not (lfw / "images_deepfunneled").is_dir():
        sys.exit(f"LFW not found at {lfw} (expected {lfw / 'images_deepfunneled'}); pass --lfw PATH. Nothing measured.")

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    index = _index(lfw, args.subset)
    tmp = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="cleanface-bench-"))
    try:
        rows = [measure(index, s["size"], s["crop"], args.workers, args.batch_size, tmp) for s in SETTINGS]
    finally:
        if not args.cache_dir:
            shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "benchmark": "decode_cache",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "subset": args.subset,
        "images": len(index),
        "identities": index.num_identities,
        "batch_size": args.batch_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch_threads": torch.get_num_threads()},
        "results": rows,
    }
    print(f"LFW {args.subset}: {len(index):,} images, {index.num_identities} identities (images/s)")
    print(f"{'setting':>16} {'decode':>8} {'build':>8} {'dataset(cache)':>15} {'dataset(decode)':>16} {'cached batches':>15}")
    for r in rows:
        print(
            f"{r['crop']:>5} -> {r['size']:>3} px {r['decode_images_per_s']:>8.0f} {r['build_images_per_s']:>8.0f} "
            f"{r['dataset_images_per_s']:>15.0f} {r['dataset_decode_images_per_s']:>16.0f} {r['cached_batches_images_per_s']:>15.0f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
