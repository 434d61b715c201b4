"""Feeding faces to torch: a per-sample Dataset, its DataLoader, and a fast cached batch iterator.

Randomness is reproducible: the shuffle order and the horizontal flips of an epoch
are functions of ``(seed, epoch)`` only, drawn from a ``torch.Generator`` in the main
process, so they do not depend on the number of workers, and a training run resumed
mid-epoch sees exactly the batches it would have seen.

Two ways in:

* :class:`FaceDataset` + :func:`make_loader`: the general path (decodes on the fly, or
  reads a :class:`~cleanface.data.cache.DecodeCache`), with worker processes;
* :class:`CachedBatches`: reads whole sorted batches from the cache memmap and
  normalises them with torch ops in the main process. On small CPUs the per-item
  overhead of a Dataset dominates, and this path is several times faster.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cleanface.data.cache import DecodeCache
from cleanface.data.images import decode_image, flip_batch, to_tensor, to_tensor_batch
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError

_MIX = 1_000_003  # combines (seed, epoch) into one generator seed


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The torch Generator that draws epoch ``epoch``'s order and flips for ``seed``."""
    return torch.Generator().manual_seed((int(seed) * _MIX + int(epoch)) % (2**63 - 1))


class FaceDataset(Dataset):
    """Faces of a :class:`DatasetIndex` as ``(image, label, sample index)``.

    Parameters
    ----------
    index : DatasetIndex
    size : int
        Output side in pixels.
    crop : int or None
        Centre crop side in source pixels before the resize.
    train : bool
        Random horizontal flips.
    cache : DecodeCache, optional
        Read decoded pixels from this cache (no decoding); its failed samples are left out.
    seed : int, optional
        Makes the flips of :meth:`__getitem__` a function of ``(seed, epoch, position)``;
        None draws them from torch's global generator.

    Items
    -----
    image : Tensor (3, size, size) float32 in [-1, 1]
    label : int
    sample index : int
        Position of the sample in ``index`` (not in this dataset, which may leave samples out).
    """

    def __init__(
        self,
        index: DatasetIndex,
        *,
        size: int,
        crop: int | None = None,
        train: bool = False,
        cache: DecodeCache | None = None,
        seed: int | None = None,
    ) -> None:
        if cache is not None and not cache.matches(index, size=size, crop=crop):
            raise ConfigError(f"the decode cache {cache.path} holds another dataset or size/crop than requested ({index.root}, size {size}, crop {crop})")
        self.index = index
        self.size = int(size)
        self.crop = crop
        self.train = bool(train)
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self._flips: torch.Tensor | None = None
        self.samples = np.flatnonzero(cache.valid) if cache is not None else np.arange(len(index), dtype=np.int64)
        self.labels = index.labels[self.samples]

    @property
    def excluded(self) -> int:
        """Samples of the index left out because they failed to decode."""
        return len(self.index) - len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's flips (with ``seed``) from ``(seed, epoch)``."""
        self.epoch = int(epoch)
        self._flips = None

    def _flip_for(self, pos: int) -> bool:
        if self.seed is None:
            return bool(torch.rand(()) < 0.5)
        if self._flips is None:
            self._flips = torch.rand(len(self.samples), generator=epoch_generator(self.seed, self.epoch)) < 0.5
        return bool(self._flips[pos])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, int, int]:
        """``key`` is a position, or ``(position, flip)`` as yielded by :class:`EpochSampler`."""
        if isinstance(key, tuple):
            pos, flip = int(key[0]), bool(key[1])
        else:
            pos = int(key)
            flip = self.train and self._flip_for(pos)
        i = int(self.samples[pos])
        if self.cache is not None:
            arr = self.cache.images[i]
        else:
            arr = decode_image(self.index.read_bytes(i), size=self.size, crop=self.crop, where=self.index.location(i))
        image = to_tensor(np.asarray(arr))
        if flip:
            image = image.flip(-1)
        return image, int(self.index.labels[i]), i


class EpochSampler(Sampler):
    """Positions of an epoch in an order fixed by ``(seed, epoch)``, each with its flip decision.

    Yields ``(position, flip)``; ``flip`` is False everywhere unless ``flips``.
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int, flips: bool) -> None:
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.flips = flips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        flip = torch.rand(self.length, generator=g) < 0.5 if self.flips else torch.zeros(self.length, dtype=torch.bool)
        return iter(zip(order.tolist(), flip[order].tolist()))


class FaceLoader(DataLoader):
    """A DataLoader with :meth:`set_epoch` (order and flips of the epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        dataset = self.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # type: ignore[attr-defined]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    dataset: FaceDataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> FaceLoader:
    """A DataLoader over ``dataset`` whose order and flips follow ``seed`` and :meth:`FaceLoader.set_epoch`.

    Batches are ``(images (B, 3, S, S) float32, labels (B,) int64, sample indices (B,) int64)``.
    ``workers > 0`` decodes in persistent worker processes; memory is pinned only when
    CUDA is available.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be 0 or more, got {workers}")
    if len(dataset) == 0:
        raise DataError("the dataset has no usable samples to load")
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, flips=getattr(dataset, "train", False))
    return FaceLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if workers > 0 else None,
    )


class CachedBatches:
    """Batches read straight from a :class:`DecodeCache`: ``(images, labels, sample indices)``.

    Parameters
    ----------
    cache : DecodeCache
    labels : ndarray of shape (N,), int
        Label of every sample of the cached index (e.g. ``index.labels``).
    indices : ndarray of shape (M,), int, optional
        Samples to iterate (default: all); samples that failed to decode are left out.
    batch_size : int
    shuffle : bool
    seed : int
    train : bool
        Random horizontal flips.
    drop_last : bool
        Leave out the last, smaller batch.

    Each epoch's order and flips are drawn from ``(seed, epoch)``; within a batch samples
    are read in sorted order (contiguous memmap reads). Yields
    ``images (B, 3, size, size) float32 in [-1, 1]``, ``labels (B,) int64``, ``sample indices (B,) int64``.
    """

    def __init__(
        self,
        cache: DecodeCache,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
        train: bool = True,
        *,
        drop_last: bool = False,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(cache),):
            raise ConfigError(f"labels must have shape ({len(cache)},) like the cache, got {labels.shape}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        ids = np.arange(len(cache), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(cache)):
            raise ConfigError(f"indices must lie in [0, {len(cache)}), got range [{ids.min()}, {ids.max()}]")
        keep = cache.valid[ids]
        self.excluded = int((~keep).sum())
        self.indices = ids[keep]
        if len(self.indices) == 0:
            raise DataError(f"no usable samples to iterate in the decode cache {cache.path}")
        self.cache = cache
        self.labels = torch.from_numpy(labels)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.train = train
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.iter_from(self.epoch, 0)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s sample order (M,) and flip decisions (M,) bool."""
        n = len(self.indices)
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g).numpy() if self.shuffle else np.arange(n)
        flips = (torch.rand(n, generator=g) < 0.5).numpy() if self.train else np.zeros(n, dtype=bool)
        return self.indices[order], flips

    def iter_from(self, epoch: int, batch_offset: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch number ``batch_offset`` on (to resume mid-epoch)."""
        if batch_offset < 0:
            raise ConfigError(f"batch_offset must be 0 or more, got {batch_offset}")
        samples, flips = self.epoch_plan(epoch)
        images = self.cache.images
        for b in range(batch_offset, len(self)):
            ids = samples[b * self.batch_size : (b + 1) * self.batch_size]
            flip = flips[b * self.batch_size : (b + 1) * self.batch_size]
            order = np.argsort(ids, kind="stable")
            ids, flip = ids[order], flip[order]
            x = to_tensor_batch(images[ids])
            flip_batch(x, torch.from_numpy(flip))
            idx = torch.from_numpy(ids)
            yield x, self.labels[idx], idx
