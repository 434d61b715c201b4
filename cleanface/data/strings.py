"""A compact array of strings: one UTF-8 blob plus an offsets array.

Ten million file paths held as Python ``str`` objects cost about a gigabyte of
object headers; held here they cost their bytes plus 8 bytes each.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np


class StringArray(Sequence[str]):
    """Immutable sequence of strings stored as ``blob`` (uint8) and ``offsets`` (int64, N+1)."""

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = np.ascontiguousarray(blob, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) == 0:
            raise ValueError("offsets must be a 1-d array of length N+1")

    @classmethod
    def from_list(cls, items: Iterable[str]) -> "StringArray":
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        return cls(blob.copy(), offsets)

    @classmethod
    def empty(cls) -> "StringArray":
        return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} strings")
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.blob[start:end].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        data = self.blob.tobytes()
        offs = self.offsets.tolist()
        for a, b in zip(offs[:-1], offs[1:]):
            yield data[a:b].decode("utf-8", "surrogateescape")

    def take(self, indices: np.ndarray) -> "StringArray":
        """A new StringArray holding the strings at ``indices`` (vectorised, no per-item objects)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total == 0:
            return StringArray(np.zeros(0, np.uint8), offsets)
        # position of each output byte in the source blob
        seg = np.repeat(np.arange(len(indices)), lengths)
        src = starts[seg] + (np.arange(total) - offsets[:-1][seg])
        return StringArray(self.blob[src], offsets)

    def tolist(self) -> list[str]:
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.blob, other.blob)
        return NotImplemented

    def __repr__(self) -> str:
        return f"StringArray(n={len(self)}, bytes={len(self.blob)})"
