"""Embedding images with a backbone: flip-fused, batched, L2-normalised, resumable on disk.

* :func:`embed_arrays` embeds decoded uint8 images held in memory (or a memmap);
* :func:`embed_index` embeds every sample of a :class:`DatasetIndex` into
  ``out_dir/embeddings.npy`` (a memory-mappable ``.npy``) with ``embeddings.json`` beside it.
  Work is written in chunks with a progress file, so an interrupted run resumes from the
  last finished chunk; ``embeddings.json`` is written last and marks the file complete.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`embed_index` with ``shard=True`` embeds only
the rows ``rank::world`` into ``embeddings.rank{r}.npy``; :func:`merge_shards` joins them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cleanface._atomic import RunLock, atomic_write_json
from cleanface.data.images import decode_image, to_tensor_batch
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError
from cleanface.progress import make_progress

DTYPES = {"float16": np.float16, "float32": np.float32}
CHUNK = 4096  # samples decoded and embedded between two progress saves


@torch.no_grad()
def embed_tensor(backbone: nn.Module, x: torch.Tensor, *, flip: bool = True, device: str | torch.device = "cpu") -> torch.Tensor:
    """Embeddings (B, D) float32 L2-normalised of a float batch (B, 3, H, W) in [-1, 1].

    With ``flip`` the embedding is ``normalise(f(x) + f(flip(x)))``.
    """
    x = x.to(device, non_blocking=True)
    e = backbone(x).float()
    if flip:
        e = e + backbone(x.flip(-1)).float()
    return F.normalize(e, dim=1)


def embed_arrays(
    backbone: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    flip: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embed uint8 images (N, S, S, 3) in eval mode: (N, D) float32, L2-normalised rows."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, S, S, 3), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    was_training = backbone.training
    backbone.eval()
    try:
        parts = [embed_tensor(backbone, to_tensor_batch(images[i : i + batch_size]), flip=flip, device=device).cpu() for i in range(0, len(images), batch_size)]
    finally:
        backbone.train(was_training)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(parts).numpy()


def _decode_chunk(index: DatasetIndex, ids: np.ndarray, size: int, crop: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images of ``ids`` and a mask of those that decoded; failures become zero rows later."""
    out = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    ok = np.ones(len(ids), dtype=bool)
    for j, i in enumerate(ids):
        try:
            out[j] = decode_image(index.read_bytes(int(i)), size=size, crop=crop, where=index.location(int(i)))
        except (DataError, OSError, ValueError):
            ok[j] = False
    return out, ok


def _shard() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def embed_index(
    backbone: nn.Module,
    index: DatasetIndex,
    out_dir: str | os.PathLike,
    *,
    size: int,
    crop: int | None,
    batch_size: int = 256,
    dtype: str = "float16",
    flip: bool = True,
    device: str | torch.device = "cpu",
    silent: bool = False,
    shard: bool = False,
) -> np.ndarray:
    """Embed every sample of ``index`` into ``out_dir/embeddings.npy``; return it memory-mapped.

    Parameters
    ----------
    backbone : nn.Module
    index : DatasetIndex
    out_dir : path-like
        Created if needed. A complete earlier result for the same index fingerprint,
        model weights, dtype and flip is returned as it is; a partial one is resumed.
    size, crop : int, int or None
        Decoding settings of the run (see :func:`cleanface.data.images.decode_image`).
    batch_size : int
    dtype : {"float16", "float32"}
        Storage type; float16 halves the file for tens of millions of images.
    flip : bool
        Fuse the horizontally flipped image's embedding.
    device : str
    silent : bool
    shard : bool
        Under torchrun, embed only this rank's rows ``rank::world`` (file ``embeddings.rank{r}.npy``).

    Returns
    -------
    ndarray of shape (N, D)
        L2-normalised rows; images that fail to decode get a row of NaN (purify treats
        them as unusable), and are listed in ``embeddings.json`` under ``failed``.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"embedding dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = _shard() if shard else (0, 1)
    rows = np.arange(rank, len(index), world, dtype=np.int64)
    stem = "embeddings" if world == 1 else f"embeddings.rank{rank}"
    npy, meta_path, progress_path = out / f"{stem}.npy", out / f"{stem}.json", out / f"{stem}.progress.json"
    meta = {"fingerprint": index.fingerprint(), "count": len(rows), "dtype": dtype, "flip": bool(flip), "size": int(size), "crop": crop, "rank": rank, "world": world,
            "model": weights_stamp(backbone)}
    lock_name = RunLock.NAME if world == 1 else f".cleanface.rank{rank}.lock"
    with RunLock(out, name=lock_name):  # one writer per embeddings file: a second process is refused
        return _embed_into(backbone, index, rows, meta, npy, meta_path, progress_path, batch_size=batch_size, dtype=dtype, flip=flip,
                           size=size, crop=crop, device=device, silent=silent)


def _embed_into(backbone: nn.Module, index: DatasetIndex, rows: np.ndarray, meta: dict, npy: Path, meta_path: Path, progress_path: Path, *,
                batch_size: int, dtype: str, flip: bool, size: int, crop: int | None, device: Any, silent: bool) -> np.ndarray:
    if meta_path.is_file() and npy.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        if all(old.get(k) == v for k, v in meta.items()):
            progress_path.unlink(missing_ok=True)  # left when killed between the last two writes
            return np.load(npy, mmap_mode="r")
        meta_path.unlink()
    backbone = backbone.to(device)
    was_training = backbone.training
    backbone.eval()
    dim = _output_dim(backbone, size, device)
    done = 0
    if npy.is_file() and progress_path.is_file():
        try:
            progress = json.loads(progress_path.read_text())
            if all(progress.get(k) == v for k, v in meta.items()):
                done = int(progress["done"])
        except (ValueError, KeyError):
            done = 0
    if done == 0:
        arr = np.lib.format.open_memmap(npy, mode="w+", dtype=DTYPES[dtype], shape=(len(rows), dim))
        failed: list[int] = []
    else:
        arr = np.load(npy, mmap_mode="r+")
        failed = list(json.loads(progress_path.read_text()).get("failed", []))
    try:
        with make_progress(silent=silent) as bar:
            task = bar.add_task("embed", total=len(rows), completed=done)
            for start in range(done, len(rows), CHUNK):
                ids = rows[start : start + CHUNK]
                images, ok = _decode_chunk(index, ids, size, crop)
                emb = embed_arrays(backbone, images, batch_size=batch_size, flip=flip, device=device)
                emb[~ok] = np.nan
                failed += [int(i) for i in ids[~ok]]
                arr[start : start + len(ids)] = emb.astype(DTYPES[dtype])
                arr.flush()
                atomic_write_json(progress_path, {**meta, "done": start + len(ids), "failed": failed})
                bar.update(task, advance=len(ids))
    finally:
        backbone.train(was_training)
    del arr
    atomic_write_json(meta_path, {**meta, "dim": dim, "failed": failed})
    progress_path.unlink(missing_ok=True)
    return np.load(npy, mmap_mode="r")


def weights_stamp(module: nn.Module) -> str:
    """A short hash of every parameter and buffer of ``module``: which model embeddings on disk came from.

    A module that is not a plain torch model (an ONNX session, :mod:`cleanface.inference.onnx_embed`)
    names its weights itself with a ``weights_stamp()`` method.
    """
    own = getattr(module, "weights_stamp", None)
    if callable(own):
        return str(own())
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def _output_dim(backbone: nn.Module, size: int, device: Any) -> int:
    return int(backbone(torch.zeros(1, 3, size, size, device=device)).shape[1])


def merge_shards(out_dir: str | os.PathLike, index: DatasetIndex, world: int, *, dtype: str = "float16") -> np.ndarray:
    """Join the ``world`` rank files of :func:`embed_index` (``shard=True``) into ``embeddings.npy``."""
    out = Path(out_dir)
    parts = []
    for r in range(world):
        meta_path = out / f"embeddings.rank{r}.json"
        if not meta_path.is_file():
            raise DataError(f"embedding shard {r} of {world} in {out} is missing or unfinished ({meta_path})")
        parts.append(np.load(out / f"embeddings.rank{r}.npy", mmap_mode="r"))
    dim = parts[0].shape[1]
    arr = np.lib.format.open_memmap(out / "embeddings.npy", mode="w+", dtype=DTYPES[dtype], shape=(len(index), dim))
    failed: list[int] = []
    for r, part in enumerate(parts):
        arr[r::world] = part
        failed += json.loads((out / f"embeddings.rank{r}.json").read_text()).get("failed", [])
    arr.flush()
    del arr
    atomic_write_json(out / "embeddings.json", {"fingerprint": index.fingerprint(), "count": len(index), "dtype": dtype, "dim": dim, "failed": sorted(failed), "world": 1, "rank": 0})
    return np.load(out / "embeddings.npy", mmap_mode="r")
