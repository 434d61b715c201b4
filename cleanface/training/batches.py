"""The batches of a training epoch: an order fixed by ``(seed, epoch)``, sliced per rank, resumable.

The plan of an epoch (sample order and flips) depends only on the seed, the epoch and
the usable samples, so a run resumed at batch ``b`` of epoch ``e`` sees exactly the
batches the uninterrupted run saw, whatever the number of data workers. Under several
processes each global batch is split into equal slices, one per rank.

Two ways to materialise a batch: from the decode-once cache in this process (fast on
small CPUs: one sorted memmap read per batch), or through a DataLoader with workers that
decode the images (for data too large to cache).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from cleanface.data.cache import DecodeCache
from cleanface.data.images import to_tensor_batch
from cleanface.data.index import DatasetIndex
from cleanface.data.torch_dataset import FaceDataset, epoch_generator

Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead of the consumer, in the same order.

    Reading a batch from the cache memmap and converting it to floats overlaps with the
    training step (both release the GIL for most of their work). Errors are re-raised in
    the consumer; a consumer that stops early stops the thread.
    """
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            box.put(exc)

    thread = threading.Thread(target=produce, name="cleanface-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def epoch_plan(samples: np.ndarray, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample order (M,) and flip decisions (M,) of ``epoch`` over the usable ``samples``."""
    g = epoch_generator(seed, epoch)
    order = torch.randperm(len(samples), generator=g).numpy()
    flips = (torch.rand(len(samples), generator=g) < 0.5).numpy()
    return samples[order], flips[order]


def rank_batches(samples: np.ndarray, seed: int, epoch: int, *, global_batch: int, rank: int, world: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's ``(sample ids, flips)`` for batches ``start..`` of the epoch (the last partial batch is dropped)."""
    ids, flips = epoch_plan(samples, seed, epoch)
    local = global_batch // world
    for b in range(start, len(samples) // global_batch):
        lo = b * global_batch + rank * local
        yield ids[lo : lo + local], flips[lo : lo + local]


class BatchSource:
    """Materialises planned batches as ``(images float32 (B, 3, S, S) in [-1, 1], labels int64 (B,))``.

    Parameters
    ----------
    index : DatasetIndex
    labels : ndarray (N,)
        Training label of every sample of ``index``.
    cache : DecodeCache or None
        Read pixels from this cache; without one, images are decoded by ``workers`` processes.
    size, crop : int, int or None
    workers : int
    """

    def __init__(self, index: DatasetIndex, labels: np.ndarray, *, cache: DecodeCache | None, size: int, crop: int | None, workers: int = 0) -> None:
        self.index = index
        self._labels_np = np.ascontiguousarray(labels, dtype=np.int64)
        self.labels = torch.from_numpy(self._labels_np)
        self.cache = cache
        self.workers = workers
        self.dataset = FaceDataset(index, size=size, crop=crop, train=True, cache=cache)
        self._pos = np.full(len(index), -1, dtype=np.int64)
        self._pos[self.dataset.samples] = np.arange(len(self.dataset.samples))

    @property
    def samples(self) -> np.ndarray:
        """Usable sample ids (those the cache could decode; all of them without a cache)."""
        return self.dataset.samples

    def iterate(self, planned: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[Batch]:
        if self.cache is not None and self.workers == 0:
            for raw, labels in prefetch(self._from_cache(planned)):
                yield to_tensor_batch(raw), labels  # float conversion here, on torch's own threads
            return
        batches = [[(int(p), bool(f)) for p, f in zip(self._pos[ids], flips)] for ids, flips in planned]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=torch.cuda.is_available())
        for images, labels, _ in loader:
            yield images, labels

    def _from_cache(self, planned: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """uint8 batches, mirrored where planned, with their labels: numpy only (see :func:`mirrored`)."""
        pixels, labels = self.cache.images, self._labels_np
        for ids, flips in planned:
            order = np.argsort(ids, kind="stable")  # contiguous reads; order within a batch does not matter
            ids, flips = ids[order], flips[order]
            yield mirrored(pixels[ids], flips), torch.from_numpy(labels[ids])


def mirrored(raw: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) mirrored left-right where ``flips``, in place.

    numpy, not torch: this runs in the prefetch thread, and torch operations there would
    start a second pool of compute threads competing with the training step for the cores.
    Mirroring before the float conversion gives the same values as
    :func:`~cleanface.data.images.to_tensor_batch` then :func:`~cleanface.data.images.flip_batch`
    (the conversion is per pixel), and the conversion itself is ten times faster in torch
    on the main thread than in numpy.
    """
    if flips.any():
        raw[flips] = raw[flips][:, :, ::-1]
    return raw
