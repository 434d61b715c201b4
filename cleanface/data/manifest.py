"""CSV manifests: a ``path,identity`` header, then one row per image.

Paths are relative to the manifest's folder (absolute paths are accepted when they
lie inside it). A path that leaves that folder (``../x``, ``/etc/passwd``) is listed
in ``bad_files`` and never read.

Reading is built for millions of rows: a manifest without quote characters is parsed
with numpy over the raw bytes (paths go straight into a :class:`StringArray`, no
per-row string is kept); one with quoting goes through the ``csv`` module.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path

import numpy as np

from cleanface.data.index import BadFile, DatasetIndex
from cleanface.data.strings import StringArray
from cleanface.errors import DataError
from cleanface.progress import make_progress

HEADER = ("path", "identity")
_CHUNK = 65536


def _gather(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> StringArray:
    """The sorted, disjoint byte ranges ``[starts, ends)`` of ``data`` as a StringArray.

    Works through the ranges in chunks with a small per-byte mask, so memory stays at the
    output size plus a few MB (no per-byte index array, no per-row object).
    """
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    blob = np.empty(int(offsets[-1]), dtype=np.uint8)
    for a in range(0, len(starts), _CHUNK):
        s, e = starts[a : a + _CHUNK], ends[a : a + _CHUNK]
        lo, hi = int(s[0]), int(e[-1])
        delta = np.zeros(hi - lo + 1, dtype=np.int8)
        np.add.at(delta, s - lo, 1)
        np.add.at(delta, e - lo, -1)
        np.cumsum(delta, out=delta)  # 1 inside a range, 0 outside
        blob[offsets[a] : offsets[a + len(s)]] = data[lo:hi][delta[:-1].view(bool)]
    return StringArray(blob, offsets)


def _labels_of(data: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Number the identities ``data[starts:ends]`` in order of first appearance (chunked, no per-row list kept)."""
    lookup: dict[bytes, int] = {}
    labels = np.empty(len(starts), dtype=np.int64)
    for a in range(0, len(starts), _CHUNK):
        s = starts[a : a + _CHUNK].tolist()
        e = ends[a : a + _CHUNK].tolist()
        labels[a : a + len(s)] = [lookup.setdefault(data[i:j], len(lookup)) for i, j in zip(s, e)]
    return labels, list(lookup)


def _parse_fast(raw: bytes, name: str) -> tuple[StringArray, np.ndarray, list[bytes], np.ndarray]:
    """Parse a quote-free ``path,identity`` manifest. Returns paths, labels, identity bytes, line numbers."""
    data = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    line_starts = np.concatenate([[0], newlines + 1])
    line_ends = np.concatenate([newlines, [len(data)]])
    if len(line_ends) and line_ends[-1] == line_starts[-1]:  # text ends with a newline
        line_starts, line_ends = line_starts[:-1], line_ends[:-1]
    cr = (line_ends > line_starts) & (data[np.maximum(line_ends - 1, 0)] == 13)
    line_ends = line_ends - cr
    linenos = np.arange(1, len(line_starts) + 1, dtype=np.int64)
    nonblank = line_ends > line_starts
    line_starts, line_ends, linenos = line_starts[nonblank], line_ends[nonblank], linenos[nonblank]
    line_starts, line_ends, linenos = line_starts[1:], line_ends[1:], linenos[1:]
    if len(line_starts) == 0:
        return StringArray.empty(), np.zeros(0, np.int64), [], linenos
    del newlines, cr, nonblank
    commas = np.flatnonzero(data == 44)
    # the line each comma sits in; commas outside data lines (header) are dropped
    where = np.searchsorted(line_starts, commas, side="right") - 1
    inside = (where >= 0) & (commas < line_ends[np.maximum(where, 0)])
    commas, where = commas[inside], where[inside]
    per_line = np.bincount(where, minlength=len(line_starts))
    wrong = np.flatnonzero(per_line != 1)
    if len(wrong):
        k = int(wrong[0])
        raise DataError(f"{name} line {int(linenos[k])}: expected 2 fields (path,identity), got {int(per_line[k]) + 1}")
    comma = np.empty(len(line_starts), dtype=np.int64)
    comma[where] = commas
    del commas, where, inside, per_line
    empty = (comma == line_starts) | (comma + 1 == line_ends)
    if np.any(empty):
        k = int(np.argmax(empty))
        raise DataError(f"{name} line {int(linenos[k])}: empty {'path' if comma[k] == line_starts[k] else 'identity'}")
    paths = _gather(data, line_starts, comma)
    labels, idents = _labels_of(raw, comma + 1, line_ends)
    return paths, labels, idents, linenos


def _parse_csv(text: str, name: str) -> tuple[StringArray, np.ndarray, list[str], np.ndarray]:
    """Parse any CSV with ``path`` and ``identity`` columns through the csv module."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name} is empty; expected a 'path,identity' header") from None
    except csv.Error as exc:
        raise DataError(f"{name} line 1: malformed CSV: {exc}") from None
    cols = [h.strip() for h in header]
    if "path" not in cols or "identity" not in cols:
        raise DataError(f"{name} line 1: expected a header with 'path' and 'identity' columns, got {','.join(cols)[:80]!r}")
    pi, ii = cols.index("path"), cols.index("identity")
    paths: list[str] = []
    lookup: dict[str, int] = {}
    labels: list[int] = []
    linenos: list[int] = []
    try:
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != len(cols):
                raise DataError(f"{name} line {reader.line_num}: expected {len(cols)} fields, got {len(row)}")
            path, ident = row[pi], row[ii]
            if not path or not ident:
                raise DataError(f"{name} line {reader.line_num}: empty {'path' if not path else 'identity'}")
            paths.append(path)
            labels.append(lookup.setdefault(ident, len(lookup)))
            linenos.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: malformed CSV: {exc}") from None
    return StringArray.from_list(paths), np.array(labels, dtype=np.int64), list(lookup), np.array(linenos, dtype=np.int64)


def _escaping(paths: StringArray) -> np.ndarray:
    """Rows whose path is absolute or has a ``..`` component (candidates for leaving the folder), shape (N,) bool."""
    blob, offs = paths.blob, paths.offsets
    n = len(paths)
    flagged = np.zeros(n, dtype=bool)
    nonempty = offs[1:] > offs[:-1]
    flagged[nonempty] = blob[offs[:-1][nonempty]] == ord("/")
    if len(blob) >= 2:
        dots = np.flatnonzero((blob[:-1] == ord(".")) & (blob[1:] == ord(".")))
        if len(dots):
            row = np.searchsorted(offs, dots, side="right") - 1
            start_ok = (dots == offs[row]) | (blob[np.maximum(dots - 1, 0)] == ord("/"))
            end = dots + 2
            end_ok = (end == offs[row + 1]) | (blob[np.minimum(end, len(blob) - 1)] == ord("/"))
            hit = start_ok & end_ok & (end <= offs[row + 1])
            flagged[row[hit]] = True
    return flagged


def _outside(path: str, root: str) -> bool:
    full = os.path.normpath(os.path.join(root, path))
    return not (full == root or full.startswith(root.rstrip(os.sep) + os.sep))


def read_manifest(csv_path: str | os.PathLike, *, check_files: bool = True, silent: bool = True) -> DatasetIndex:
    """Index a ``path,identity`` CSV manifest.

    Parameters
    ----------
    csv_path : path-like
        The manifest. The header names the columns (``path`` and ``identity``; other
        columns are ignored). Paths are relative to the manifest's folder.
    check_files : bool
        Check that every file exists (one ``stat`` per row); missing ones go to
        ``bad_files``. Turn off for very large manifests whose files are known to exist.
    silent : bool
        No progress bar.

    Returns
    -------
    DatasetIndex
        ``kind="manifest"``, ``root`` the manifest's folder, identities numbered in
        sorted order, rows in file order. Paths leaving the folder and missing files
        are in ``bad_files`` and not in the index.

    Raises
    ------
    DataError
        Unreadable file, bad header, a malformed row (with its line number), or no usable row.
    """
    csv_path = Path(csv_path)
    name = str(csv_path)
    try:
        raw = csv_path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read manifest {csv_path}: {exc.strerror or exc}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    end = raw.find(b"\n")
    first = raw[: end if end >= 0 else len(raw)].rstrip(b"\r")
    if not raw.strip():
        raise DataError(f"{name} is empty; expected a 'path,identity' header")
    lone_cr = raw.count(b"\r") != raw.count(b"\r\n")
    if b'"' not in raw and not lone_cr and first.strip() == b"path,identity":
        paths, labels, idents_raw, linenos = _parse_fast(raw, name)
        idents = [b.decode("utf-8", "surrogateescape") for b in idents_raw]
    else:
        paths, labels, idents, linenos = _parse_csv(raw.decode("utf-8", "surrogateescape"), name)
    del raw
    if len(paths) == 0:
        raise DataError(f"{name} has a header but no rows")
    root = os.path.abspath(csv_path.parent)
    bad: list[BadFile] = []
    keep = np.ones(len(paths), dtype=bool)
    for i in np.flatnonzero(_escaping(paths)).tolist():
        path = paths[i]
        if _outside(path, root):
            keep[i] = False
            bad.append(BadFile(path, f"path leaves the manifest folder {root} (line {int(linenos[i])}); not read"))
    if check_files:
        with make_progress(silent=silent) as progress:
            task = progress.add_task(f"checking files of {csv_path.name}", total=len(paths))
            for i, path in enumerate(paths):
                if keep[i]:
                    reason = _missing(os.path.join(root, path))
                    if reason is not None:
                        keep[i] = False
                        bad.append(BadFile(os.path.join(root, path), f"{reason} (line {int(linenos[i])})"))
                if i % 4096 == 0:
                    progress.update(task, completed=i)
            progress.update(task, completed=len(paths))
    if not keep.any():
        raise DataError(f"{name}: none of its {len(paths)} rows points to a usable file; first problem: {bad[0].location}: {bad[0].reason}")
    order = sorted(range(len(idents)), key=lambda c: idents[c])
    remap = np.empty(len(idents), dtype=np.int64)
    remap[order] = np.arange(len(idents))
    index = DatasetIndex(root, "manifest", paths, remap[labels], [idents[c] for c in order], None, bad)
    if not keep.all():
        index = index.subset(np.flatnonzero(keep))
    return index


def _missing(path: str) -> str | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return "missing file" if isinstance(exc, FileNotFoundError) else f"cannot read: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "zero-byte file"
    return None


def write_manifest(index: DatasetIndex, out_csv: str | os.PathLike, *, paths: StringArray | None = None) -> Path:
    """Write ``index`` as a ``path,identity`` manifest (atomically).

    Parameters
    ----------
    index : DatasetIndex
        File-based samples (``folder`` or ``manifest``).
    out_csv : path-like
        The manifest to write. Every sample file must lie inside its folder: paths
        are written relative to it.
    paths : StringArray, optional
        Paths to write instead, already relative to ``out_csv``'s folder (used when
        the images are written beside the manifest).
    """
    from cleanface._atomic import atomic_write

    out_csv = Path(out_csv)
    base = os.path.abspath(out_csv.parent)
    if paths is None:
        if index.kind == "rec":
            raise DataError(f"cannot write a manifest for the RecordIO dataset {index.root} without writing its images; use write_dataset(index, out, 'manifest')")
        root = os.path.abspath(index.root)
        if not (root == base or root.startswith(base.rstrip(os.sep) + os.sep)):
            raise DataError(
                f"the images of {index.root} lie outside {base}; a manifest may only point inside its folder, so use write_dataset(index, out, 'manifest') to put them beside it"
            )
        blob, offs = index.paths.blob, index.paths.offsets
        nonempty = offs[1:] > offs[:-1]
        absolute = bool(np.any(blob[offs[:-1][nonempty]] == ord("/")))
        if root == base and not absolute:
            paths = index.paths
        else:
            paths = StringArray.from_list(os.path.relpath(os.path.join(root, p), base) for p in index.paths)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    with atomic_write(out_csv, "wb") as handle:
        for start in range(0, len(index), _CHUNK):
            stop = min(start + _CHUNK, len(index))
            writer.writerows((paths[i], index.names[c]) for i, c in zip(range(start, stop), index.labels[start:stop].tolist()))
            handle.write(buf.getvalue().encode("utf-8", "surrogateescape"))
            buf.seek(0)
            buf.truncate()
        if len(index) == 0:
            handle.write(buf.getvalue().encode("utf-8", "surrogateescape"))
    return out_csv
