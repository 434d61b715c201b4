"""RecordIO (``train.rec`` + ``train.idx``) read and written without mxnet.

Layout on disk (little-endian):

* ``.idx``: text lines ``<key>\\t<byte offset>``, one per record.
* ``.rec``: a sequence of parts. Each part is ``uint32 magic (0xced7230a)``,
  ``uint32 lrecord`` (length in the low 29 bits, continuation flag ``cflag`` in
  bits 29-31), the part's bytes, then zero padding to a multiple of 4. A record
  whose payload holds the magic at a 4-byte-aligned offset is cut there: the
  magic word is left out and the pieces are written as parts with cflag 1 (first),
  2 (middle) and 3 (last); a reader puts the magic back between the pieces.
  ``cflag == 0`` is a record in one part.
* payload: header ``"<IfQQ"`` (flag, label, id, id2); when ``flag > 0`` the label
  is the array of ``flag`` float32 values that follow the header; then the image bytes.

Two dataset layouts are read:

* insightface: record 0 is a header whose label array is ``(first identity
  record, end)``; records ``1 .. first-1`` are images with scalar labels; records
  ``[first, end)`` describe identities by their ``[start, end)`` image records.
* im2rec: no header record, every record is an image whose label is its scalar
  label (or the first value of its label array).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cleanface.data.index import BadFile, DatasetIndex
from cleanface.data.strings import StringArray
from cleanface.errors import DataError
from cleanface.progress import make_progress

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
_MAX_PART = _LENGTH_MASK

REC_NAME = "train.rec"
IDX_NAME = "train.idx"
NAME_FILES = ("identities.txt", "names.txt")


# -- payload ------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordHeader:
    """The ``IfQQ`` header of a payload; ``label`` is a float or a float32 array of length ``flag``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_record(flag: int, label: float | np.ndarray | list[float], id: int, id2: int, image: bytes = b"") -> bytes:
    """Build a payload: the ``IfQQ`` header, the label array when there is one, the image bytes.

    Parameters
    ----------
    flag : int
        Ignored when ``label`` is an array (the flag becomes its length); 0 for a scalar label.
    label : float or array-like of shape (L,)
        A scalar label, or a label array (written as float32 after the header).
    id, id2 : int
        The two uint64 header fields (``id`` is conventionally the record key).
    image : bytes
        Encoded image bytes (empty for header and identity records).
    """
    if np.ndim(label) == 0:
        if flag != 0:
            raise ValueError(f"flag must be 0 with a scalar label, got {flag}")
        return _HEADER.pack(0, float(label), int(id), int(id2)) + bytes(image)
    values = np.asarray(label, dtype="<f4").ravel()
    return _HEADER.pack(len(values), 0.0, int(id), int(id2)) + values.tobytes() + bytes(image)


def unpack_payload(payload: bytes | memoryview) -> tuple[RecordHeader, bytes]:
    """Split a payload into its header and its image bytes.

    Raises
    ------
    ValueError
        When the payload is shorter than its header or its label array.
    """
    if len(payload) < _HEADER.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {_HEADER.size}-byte header")
    flag, label, id_, id2 = _HEADER.unpack_from(payload, 0)
    start = _HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise ValueError(f"label array of {flag} values runs past the end of a {len(payload)}-byte payload")
        values = np.frombuffer(bytes(payload[start:end]), dtype="<f4").astype(np.float32)
        return RecordHeader(flag, values, id_, id2), bytes(payload[end:])
    return RecordHeader(0, float(label), id_, id2), bytes(payload[start:])


def _split_parts(payload: bytes) -> list[tuple[int, bytes]]:
    """Cut ``payload`` at each 4-byte-aligned magic word: ``[(cflag, bytes), ...]``."""
    cuts = []
    pos = payload.find(_MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            cuts.append(pos)
            pos = payload.find(_MAGIC_BYTES, pos + 4)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    if not cuts:
        return [(0, payload)]
    parts = []
    start = 0
    for i, cut in enumerate(cuts):
        parts.append((1 if i == 0 else 2, payload[start:cut]))
        start = cut + 4
    parts.append((3, payload[start:]))
    return parts


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record: its parts, each with magic, lrecord and padding."""
    out = bytearray()
    for cflag, data in _split_parts(payload):
        if len(data) > _MAX_PART:
            raise DataError(f"a record part of {len(data)} bytes exceeds the RecordIO limit of {_MAX_PART} bytes")
        out += _PART.pack(MAGIC, (cflag << 29) | len(data))
        out += data
        out += b"\0" * (-len(data) % 4)
    return bytes(out)


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


# -- low-level reading --------------------------------------------------------------
def read_record(buf: bytes | mmap.mmap | memoryview, offset: int, *, name: str = "<rec>") -> tuple[bytes, int]:
    """Reassemble the record whose first part starts at ``offset`` of ``buf``.

    Returns
    -------
    payload : bytes
    next_offset : int
        Where the next record starts.

    Raises
    ------
    DataError
        Bad magic, a bad continuation flag or a record running past the end, naming ``name`` and the offset.
    """
    size = len(buf)
    if offset < 0 or offset > size - _PART.size:
        raise DataError(f"{name}: offset {offset} is past the end of the file ({size} bytes)")
    pieces: list[bytes] = []
    pos = offset
    first = True
    while True:
        if pos > size - _PART.size:
            raise DataError(f"{name}: record at offset {offset} is truncated (file ends at {size} bytes)")
        magic, lrec = _part_header(buf, pos)
        if magic != MAGIC:
            raise DataError(f"{name}: bad magic 0x{magic:08x} at offset {pos} (record at offset {offset}); the file is not RecordIO or is corrupted")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = pos + _PART.size
        if start + length > size:
            raise DataError(f"{name}: record at offset {offset} is truncated (needs {start + length - size} more bytes)")
        if first and cflag not in (0, 1) or not first and cflag not in (2, 3):
            raise DataError(f"{name}: unexpected continuation flag {cflag} at offset {pos} (record at offset {offset})")
        pieces.append(bytes(buf[start : start + length]))
        pos = start + length + (-length % 4)
        if cflag in (0, 3):
            return (_MAGIC_BYTES.join(pieces) if len(pieces) > 1 else pieces[0]), min(pos, size)
        first = False


def iter_records(buf: bytes | mmap.mmap, *, name: str = "<rec>") -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for every record of ``buf`` in file order."""
    pos = 0
    while pos < len(buf):
        payload, nxt = read_record(buf, pos, name=name)
        yield pos, payload
        pos = nxt


class _FdCache:
    """Open file descriptors of ``.rec`` files, reopened after a fork or a change of the file.

    A cached descriptor is used (or closed) only while ``fstat`` shows it still refers
    to the file it was opened for: should its number ever be closed and reused elsewhere
    in the process, it is reopened rather than read from, and the other owner's file is
    left alone. A lock makes the cache safe to share between threads.
    """

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, tuple, int]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[int, int]:
        st = os.stat(path)
        sig = (os.getpid(), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._fds.get(path)
            if hit is not None and hit[1] == sig and _still_open_on(hit[0], sig):
                return hit[0], st.st_size
            if hit is not None:
                self._release(*hit[:2])
            if len(self._fds) > 64:
                for other_fd, other_sig, _ in self._fds.values():
                    self._release(other_fd, other_sig)
                self._fds.clear()
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = (fd, sig, st.st_size)
            return fd, st.st_size

    @staticmethod
    def _release(fd: int, sig: tuple) -> None:
        """Close ``fd`` if this process opened it and it still refers to the file of ``sig`` (a parent's descriptors are left alone)."""
        if sig[0] == os.getpid() and _still_open_on(fd, sig):
            os.close(fd)


def _still_open_on(fd: int, sig: tuple) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == sig[1:3]


_FDS = _FdCache()


class _PreadBuffer:
    """Just enough of a buffer (``len``, slicing, ``unpack_from``) over ``os.pread`` for :func:`read_record`."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> bytes:
        return os.pread(self.fd, s.stop - s.start, s.start)


def _part_header(buf: object, pos: int) -> tuple[int, int]:
    """``(magic, lrecord)`` at ``pos`` of a bytes-like, mmap or pread buffer."""
    if isinstance(buf, _PreadBuffer):
        return _PART.unpack(buf[pos : pos + _PART.size])
    return _PART.unpack_from(buf, pos)  # type: ignore[arg-type]


def read_image_at(rec_path: str | os.PathLike, offset: int) -> bytes:
    """The image bytes of the record at ``offset`` of ``rec_path`` (header and label array stripped).

    Safe in forked worker processes: reads use ``os.pread`` on a descriptor opened per process.
    """
    path = os.fspath(rec_path)
    try:
        fd, size = _FDS.get(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    payload, _ = read_record(_PreadBuffer(fd, size), int(offset), name=path)
    try:
        _, image = unpack_payload(payload)
    except ValueError as exc:
        raise DataError(f"{path}: record at offset {offset}: {exc}") from None
    return image


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
    from cleanface.data.folder import safe_name

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

    _check_not_source(index, out_dir)
    n, c = len(index), index.num_identities
    order = np.argsort(index.labels, kind="stable")
    counts = index.counts()
    starts = np.concatenate([[0], np.cumsum(counts)]) + 1
    with staging_dir(out_dir, overwrite=overwrite) as stage:
        with RecordWriter(stage / REC_NAME, stage / IDX_NAME) as writer, make_progress(silent=silent) as progress:
            writer.write(0, pack_record(2, [n + 1, n + 1 + c], 0, 0))
            task = progress.add_task(f"writing {REC_NAME}", total=n)
            for key, i in enumerate(order.tolist(), 1):
                writer.write(key, pack_record(0, float(index.labels[i]), key, 0, index.read_bytes(i)))
                progress.advance(task)
            for label in range(c):
                writer.write(n + 1 + label, pack_record(2, [starts[label], starts[label + 1]], n + 1 + label, 0))
        text = "".join(name.replace("\r", " ").replace("\n", " ") + "\n" for name in index.names)
        (stage / NAME_FILES[0]).write_bytes(text.encode("utf-8", "surrogateescape"))
    return Path(out_dir)


def _check_not_source(index: DatasetIndex, out: str | os.PathLike) -> None:
    out_abs = Path(os.path.abspath(out))
    src = Path(os.path.abspath(index.root))
    if out_abs == src or out_abs in src.parents:
        raise DataError(f"cannot write into {out}: it holds the source dataset {index.root}")
