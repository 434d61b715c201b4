"""RecordIO datasets (``train.rec`` + ``train.idx``) read and written without mxnet.

The record framing and payload header are in :mod:`cleanface.data._recordio_codec`
(re-exported here); this module adds the dataset layer:

* ``.idx``: text lines ``<key>\\t<byte offset>``, one per record.
* insightface layout: record 0 is a header whose label array is ``(first identity
  record, end)``; records ``1 .. first-1`` are images with scalar labels; records
  ``[first, end)`` describe identities by their ``[start, end)`` image records.
* im2rec layout: no header record, every record is an image whose label is its scalar
  label (or the first value of its label array).
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from cleanface.data._paths import check_not_source, safe_name
from cleanface.data._recordio_codec import (
    _PART,
    MAGIC,
    RecordHeader,
    encode_record,
    iter_records,
    pack_record,
    read_image_at,
    read_record,
    unpack_payload,
)
from cleanface.data.images import not_image_bytes
from cleanface.data.index import BadFile, DatasetIndex, register_reader
from cleanface.data.strings import StringArray
from cleanface.errors import DataError
from cleanface.progress import make_progress

__all__ = [
    "IDX_NAME",
    "MAGIC",
    "NAME_FILES",
    "REC_NAME",
    "RecordHeader",
    "RecordWriter",
    "encode_record",
    "iter_records",
    "pack_record",
    "read_idx",
    "read_image_at",
    "read_rec",
    "read_record",
    "unpack_payload",
    "write_rec",
]

REC_NAME = "train.rec"
IDX_NAME = "train.idx"
NAME_FILES = ("identities.txt", "names.txt")


def _image_bytes(index: DatasetIndex, i: int, out_dir: str | os.PathLike) -> bytes:
    """The bytes of sample ``i``; a file that is not an image (a manifest may name any path) is refused, not packed."""
    data = index.read_bytes(i)
    if index.kind != "rec":
        why = not_image_bytes(data)
        if why is not None:
            raise DataError(f"{index.location(i)} is not an image ({why}); it is not written into {out_dir}")
    return data


def read_record_sample(index: DatasetIndex, i: int) -> bytes:
    """The image bytes of the record of sample ``i`` (``rec`` indexes: ``root`` is the ``.rec`` file)."""
    return read_image_at(index.root, int(index.offsets[i]))  # type: ignore[index]


register_reader("rec", read_record_sample)


# -- writer -------------------------------------------------------------------------
class RecordWriter:
    """Write records to a ``.rec`` file and their offsets to a ``.idx`` file.

    Use as a context manager; ``write(key, payload)`` appends one record.
    Files are written in place: callers wanting atomic output write into a staging directory.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii")
        self._offset = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; return its byte offset."""
        data = encode_record(payload)
        offset = self._offset
        self._rec.write(data)
        self._idx.write(f"{int(key)}\t{offset}\n")
        self._offset += len(data)
        return offset

    def close(self) -> None:
        for handle in (self._rec, self._idx):
            if not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- dataset reading ----------------------------------------------------------------
def _resolve_rec(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        rec = path / REC_NAME
        if not rec.is_file():
            recs = sorted(path.glob("*.rec"))
            if len(recs) != 1:
                raise DataError(f"{path} holds no {REC_NAME} (and not exactly one .rec file)")
            rec = recs[0]
    elif path.suffix == ".idx":
        rec = path.with_suffix(".rec")
    else:
        rec = path
    if not rec.is_file():
        raise DataError(f"RecordIO file {rec} does not exist")
    return rec, rec.with_suffix(".idx")


def read_idx(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into ``keys`` and ``offsets`` (int64 arrays of shape (R,), sorted by key)."""
    idx_path = Path(idx_path)
    try:
        raw = idx_path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {idx_path}: {exc.strerror or exc}") from None
    keys: list[int] = []
    offsets: list[int] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            key, off = int(fields[0]), int(fields[1])
            if key < 0 or off < 0 or key >= 2**63 or off >= 2**63:
                raise ValueError
        except ValueError:
            shown = line[:60].decode("ascii", "replace")
            raise DataError(f"{idx_path} line {lineno}: expected '<key>\\t<offset>' with non-negative integers, got {shown!r}") from None
        keys.append(key)
        offsets.append(off)
    k = np.array(keys, dtype=np.int64)
    o = np.array(offsets, dtype=np.int64)
    order = np.argsort(k, kind="stable")
    k, o = k[order], o[order]
    if len(k) > 1 and np.any(k[1:] == k[:-1]):
        dup = int(k[1:][k[1:] == k[:-1]][0])
        raise DataError(f"{idx_path}: key {dup} appears more than once")
    return k, o


def _scalar_label(header: RecordHeader) -> float:
    if header.flag > 0:
        return float(header.label[0]) if len(header.label) else math.nan  # type: ignore[arg-type,index]
    return float(header.label)  # type: ignore[arg-type]


def _insightface_range(header: RecordHeader, image: bytes) -> tuple[int, int] | None:
    """``(first identity record, end)`` when this payload is an insightface header record."""
    if header.flag != 2 or image:
        return None
    a, b = (float(x) for x in header.label)  # type: ignore[union-attr]
    if not (math.isfinite(a) and math.isfinite(b)) or a != int(a) or b != int(b) or not 1 <= a <= b:
        return None
    return int(a), int(b)


def _read_names(rec: Path) -> list[str] | None:
    for candidate in NAME_FILES:
        path = rec.parent / candidate
        if path.is_file():
            try:
                text = path.read_bytes().decode("utf-8", "surrogateescape")
            except OSError as exc:
                raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
            return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return None


def read_rec(path: str | os.PathLike, *, silent: bool = True) -> DatasetIndex:
    """Index a RecordIO dataset (insightface or im2rec layout).

    Parameters
    ----------
    path : path-like
        The ``.rec`` file, its ``.idx``, or a directory holding ``train.rec``.
        Without a ``.idx`` beside it the ``.rec`` is scanned record by record.
    silent : bool
        No progress bar.

    Returns
    -------
    DatasetIndex
        ``kind="rec"``, ``root`` the ``.rec`` path, ``offsets`` (N,) record offsets,
        ``paths`` ``<identity>/<record key>.jpg``. Identity names are the label numbers,
        or the lines of an ``identities.txt``/``names.txt`` beside the ``.rec``
        (line ``c`` names label ``c``). Records with a missing, fractional or negative
        label or no image bytes are listed in ``bad_files``.
    """
    rec, idx = _resolve_rec(path)
    name = str(rec)
    try:
        with open(rec, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            buf: bytes | mmap.mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise DataError(f"cannot read {rec}: {exc.strerror or exc}") from None
    try:
        if idx.is_file():
            keys, offsets = read_idx(idx)
            too_far = offsets > max(size - _PART.size, -1)
            if np.any(too_far):
                bad = int(np.argmax(too_far))
                raise DataError(f"{idx}: key {int(keys[bad])} points to offset {int(offsets[bad])}, past the end of {rec} ({size} bytes)")
            records = ((int(k), int(o)) for k, o in zip(keys, offsets))
            total = len(keys)
        else:
            records = ((k, o) for k, (o, _) in enumerate(iter_records(buf, name=name)))
            total = None
        return _index_records(rec, buf, records, total, silent=silent)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _index_records(rec: Path, buf: bytes | mmap.mmap, records: Iterator[tuple[int, int]], total: int | None, *, silent: bool) -> DatasetIndex:
    name = str(rec)
    keys: list[int] = []
    offs: list[int] = []
    labels: list[float] = []
    bad: list[BadFile] = []
    image_range: tuple[int, int] | None = None  # insightface: image keys in [1, first identity record)
    with make_progress(silent=silent) as progress:
        task = progress.add_task(f"indexing {rec.name}", total=total)
        seen = 0
        for key, offset in records:
            if seen % 4096 == 0:
                progress.update(task, completed=seen)
            n, seen = seen, seen + 1
            payload, _ = read_record(buf, offset, name=name)
            try:
                header, image = unpack_payload(payload)
            except ValueError as exc:
                raise DataError(f"{name}: record at offset {offset}: {exc}") from None
            if n == 0:
                first = _insightface_range(header, image)
                if first is not None and key == 0:
                    image_range = (1, first[0])
                    continue
            if image_range is not None and not image_range[0] <= key < image_range[1]:
                continue  # an identity record (or anything after the images)
            where = f"{rec}@{offset}"
            label = _scalar_label(header)
            if not image:
                bad.append(BadFile(where, "record holds no image bytes"))
            elif not math.isfinite(label) or label < 0 or label != int(label) or label >= 2**53:
                bad.append(BadFile(where, f"label {label!r} is not a non-negative integer"))
            else:
                keys.append(key)
                offs.append(offset)
                labels.append(label)
        progress.update(task, completed=seen, total=seen)
    if not keys:
        raise DataError(f"{rec} holds no image records" + (f" ({len(bad)} bad records, first: {bad[0].location}: {bad[0].reason})" if bad else ""))
    raw = np.array(labels, dtype=np.float64).astype(np.int64)
    used, label_arr = np.unique(raw, return_inverse=True)
    all_names = _read_names(rec)
    if all_names is None:
        names = [str(int(v)) for v in used]
    else:
        if int(used[-1]) >= len(all_names):
            raise DataError(f"{rec.parent / 'identities.txt'} names {len(all_names)} identities but {rec} uses label {int(used[-1])}")
        names = [all_names[int(v)] for v in used]
    safe = [safe_name(n) for n in names]
    paths = StringArray.from_list(f"{safe[c]}/{k}.jpg" for c, k in zip(label_arr.tolist(), keys))
    return DatasetIndex(str(rec), "rec", paths, label_arr, names, np.array(offs, dtype=np.int64), bad)


# -- dataset writing ----------------------------------------------------------------
def write_rec(index: DatasetIndex, out_dir: str | os.PathLike, *, overwrite: bool = False, silent: bool = True) -> Path:
    """Write ``index`` as ``train.rec`` + ``train.idx`` (insightface layout) and ``identities.txt``.

    Images are ordered by label (stable within a label) at keys ``1..N``; key 0 is the
    header ``(N+1, N+1+C)``; keys ``N+1..N+C`` hold each identity's ``[start, end)``.
    Labels are the index labels; ``identities.txt`` lists ``index.names`` in label order
    (line breaks inside a name become spaces). Written through a staging directory.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from cleanface._atomic import staging_dir

    check_not_source(index, out_dir)
    n, c = len(index), index.num_identities
    order = np.argsort(index.labels, kind="stable")
    counts = index.counts()
    starts = np.concatenate([[0], np.cumsum(counts)]) + 1
    with staging_dir(out_dir, overwrite=overwrite) as stage:
        with RecordWriter(stage / REC_NAME, stage / IDX_NAME) as writer, make_progress(silent=silent) as progress:
            writer.write(0, pack_record(2, [n + 1, n + 1 + c], 0, 0))
            task = progress.add_task(f"writing {REC_NAME}", total=n)
            for key, i in enumerate(order.tolist(), 1):
                writer.write(key, pack_record(0, float(index.labels[i]), key, 0, _image_bytes(index, i, out_dir)))
                progress.advance(task)
            for label in range(c):
                writer.write(n + 1 + label, pack_record(2, [starts[label], starts[label + 1]], n + 1 + label, 0))
        text = "".join(name.replace("\r", " ").replace("\n", " ") + "\n" for name in index.names)
        (stage / NAME_FILES[0]).write_bytes(text.encode("utf-8", "surrogateescape"))
    return Path(out_dir)

