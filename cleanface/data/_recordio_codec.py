"""The RecordIO binary codec: record framing and payload headers, no dataset logic.

Layout on disk (little-endian):

* ``.rec``: a sequence of parts. Each part is ``uint32 magic (0xced7230a)``,
  ``uint32 lrecord`` (length in the low 29 bits, continuation flag ``cflag`` in
  bits 29-31), the part's bytes, then zero padding to a multiple of 4. A record
  whose payload holds the magic at a 4-byte-aligned offset is cut there: the
  magic word is left out and the pieces are written as parts with cflag 1 (first),
  2 (middle) and 3 (last); a reader puts the magic back between the pieces.
  ``cflag == 0`` is a record in one part.
* payload: header ``"<IfQQ"`` (flag, label, id, id2); when ``flag > 0`` the label
  is the array of ``flag`` float32 values that follow the header; then the image bytes.

:func:`read_image_at` reads one record's image bytes by byte offset (``os.pread`` on a
per-process descriptor, safe in forked workers); it is what a RecordIO
:class:`~cleanface.data.index.DatasetIndex` reads its samples through. Datasets
(``.idx`` files, insightface and im2rec layouts, writing) are in :mod:`cleanface.data.recordio`.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cleanface.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
_MAX_PART = _LENGTH_MASK


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
