"""The dataset index: every sample's location and label in flat numpy arrays.

Notation used across cleanface: N samples, C identities. Labels are integers in
``[0, C)``; ``names[c]`` is identity ``c``'s name. A location is either a file path
relative to ``root`` (image folders and CSV manifests) or a byte offset into a
RecordIO file (``kind == "rec"``, ``root`` is the ``.rec`` path).

No Python object is created per sample: paths live in a :class:`StringArray`,
labels and offsets in int64 arrays, so ten million samples take a few hundred MB.

A sample's bytes are read through the reader registered for the index's kind
(:data:`SAMPLE_READERS`): a file read for ``folder`` and ``manifest``; the RecordIO module
registers the record read by offset for ``rec`` (:func:`register_reader`). The kind is all
a loaded index needs to find its reader, so this module imports no format module;
``cleanface/data/__init__.py`` imports the RecordIO module, so its reader is registered
before any index can be used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cleanface.data.strings import StringArray
from cleanface.errors import DataError

KINDS = ("folder", "manifest", "rec")


def read_file_sample(index: "DatasetIndex", i: int) -> bytes:
    """The bytes of the image file of sample ``i`` (``folder`` and ``manifest`` indexes)."""
    path = index.abspath(i)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


#: Reads the encoded bytes of sample ``i`` of an index.
SampleReader = Callable[["DatasetIndex", int], bytes]
#: The reader of each kind of index; the format modules that need another one register it.
SAMPLE_READERS: dict[str, SampleReader] = {"folder": read_file_sample, "manifest": read_file_sample}


def register_reader(kind: str, reader: SampleReader) -> None:
    """Make ``reader`` read the samples of every index of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    SAMPLE_READERS[kind] = reader


@dataclass(frozen=True)
class BadFile:
    """A sample that could not be indexed or decoded, with the reason."""

    location: str
    reason: str


@dataclass
class DatasetIndex:
    """Locations, labels and identity names of a face dataset.

    Attributes
    ----------
    root : str
        Folder root, manifest directory, or the ``.rec`` file for RecordIO.
    kind : str
        One of ``"folder"``, ``"manifest"``, ``"rec"``.
    paths : StringArray
        Per-sample path relative to ``root`` (for RecordIO: a synthetic name
        ``<identity>/<record id>.jpg`` used when writing other formats).
    labels : ndarray of shape (N,), int64
    names : list of str, length C
    offsets : ndarray of shape (N,), int64, or None
        RecordIO byte offset of each sample's record (``kind == "rec"`` only).
    bad_files : list of BadFile
        What indexing skipped, with the reason; nothing is dropped silently.
    """

    root: str
    kind: str
    paths: StringArray
    labels: np.ndarray
    names: list[str]
    offsets: np.ndarray | None = None
    bad_files: list[BadFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"paths and labels must be same length, but paths is {len(self.paths)} and labels is {len(self.labels)}")
        if self.offsets is not None:
            self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
            if len(self.offsets) != len(self.labels):
                raise ValueError(f"offsets and labels must be same length, but offsets is {len(self.offsets)} and labels is {len(self.labels)}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.names)):
            raise ValueError(f"labels must lie in [0, {len(self.names)}), got range [{self.labels.min()}, {self.labels.max()}]")

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_lists(
        cls,
        root: str | os.PathLike,
        kind: str,
        paths: Iterable[str],
        identities: Iterable[str],
        *,
        names: list[str] | None = None,
        offsets: np.ndarray | None = None,
        bad_files: list[BadFile] | None = None,
    ) -> "DatasetIndex":
        """Build an index from per-sample paths and identity names.

        Identities are numbered in sorted order unless ``names`` fixes the order.
        """
        paths = list(paths)
        identities = list(identities)
        if names is None:
            names = sorted(set(identities))
        lookup = {name: i for i, name in enumerate(names)}
        try:
            labels = np.fromiter((lookup[n] for n in identities), dtype=np.int64, count=len(identities))
        except KeyError as exc:
            raise DataError(f"identity {exc.args[0]!r} is not among the given names") from None
        return cls(str(root), kind, StringArray.from_list(paths), labels, list(names), offsets, list(bad_files or []))

    # -- basic queries --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_identities(self) -> int:
        return len(self.names)

    def identity_of(self, i: int) -> str:
        return self.names[int(self.labels[i])]

    def counts(self) -> np.ndarray:
        """Images per identity, shape (C,)."""
        return np.bincount(self.labels, minlength=self.num_identities)

    def location(self, i: int) -> str:
        """A human-readable location: the absolute file path, or ``file.rec@offset``."""
        if self.kind == "rec":
            return f"{self.root}@{int(self.offsets[i])}"  # type: ignore[index]
        return str(Path(self.root) / self.paths[i])

    def abspath(self, i: int) -> Path:
        """Absolute path of sample ``i`` (image files only)."""
        if self.kind == "rec":
            raise DataError(f"sample {i} of {self.root} is a RecordIO record, not a file")
        return Path(self.root) / self.paths[i]

    def read_bytes(self, i: int) -> bytes:
        """The encoded image bytes of sample ``i``, read by the reader of this index's kind (:data:`SAMPLE_READERS`)."""
        reader = SAMPLE_READERS.get(self.kind)
        if reader is None:
            raise DataError(f"no reader is registered for {self.kind} indexes (import cleanface.data to register them)")
        return reader(self, i)

    # -- derived indexes ------------------------------------------------------------
    def subset(self, indices: np.ndarray, *, renumber: bool = True) -> "DatasetIndex":
        """The samples at ``indices``; with ``renumber`` identities left empty disappear and labels become consecutive."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = self.labels[indices]
        names = self.names
        if renumber:
            used = np.unique(labels)
            remap = np.full(self.num_identities, -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            labels = remap[labels]
            names = [self.names[c] for c in used]
        offsets = None if self.offsets is None else self.offsets[indices]
        return DatasetIndex(self.root, self.kind, self.paths.take(indices), labels, list(names), offsets, list(self.bad_files))

    def with_labels(self, labels: np.ndarray, names: list[str]) -> "DatasetIndex":
        """The same samples under new labels and names."""
        return DatasetIndex(self.root, self.kind, self.paths, labels, list(names), self.offsets, list(self.bad_files))

    def fingerprint(self) -> str:
        """A short hash of root, locations and labels (not of image bytes)."""
        h = hashlib.sha256()
        h.update(f"{self.kind}\0{os.path.abspath(self.root)}\0".encode())
        h.update(self.paths.blob.tobytes())
        h.update(self.paths.offsets.tobytes())
        h.update(self.labels.tobytes())
        if self.offsets is not None:
            h.update(self.offsets.tobytes())
        h.update("\0".join(self.names).encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Store the index as a ``.npz`` (no pickle) written atomically."""
        from cleanface._atomic import atomic_write

        arrays = {
            "meta": np.array([self.root, self.kind]),
            "paths_blob": self.paths.blob,
            "paths_offsets": self.paths.offsets,
            "labels": self.labels,
            "names": np.array(self.names, dtype=object).astype(str) if self.names else np.zeros(0, dtype="<U1"),
            "offsets": self.offsets if self.offsets is not None else np.zeros(0, np.int64),
            "has_offsets": np.array(self.offsets is not None),
            "bad": np.array([[b.location, b.reason] for b in self.bad_files], dtype=str).reshape(-1, 2),
        }
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetIndex":
        try:
            z = np.load(path, allow_pickle=False)
            root, kind = (str(x) for x in z["meta"])
            offsets = z["offsets"] if bool(z["has_offsets"]) else None
            bad = [BadFile(str(a), str(b)) for a, b in z["bad"]]
            return cls(root, kind, StringArray(z["paths_blob"], z["paths_offsets"]), z["labels"], [str(n) for n in z["names"]], offsets, bad)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read dataset index {path}: {exc}") from None

    def __repr__(self) -> str:
        return f"DatasetIndex(kind={self.kind!r}, root={self.root!r}, images={len(self)}, identities={self.num_identities}, bad_files={len(self.bad_files)})"
