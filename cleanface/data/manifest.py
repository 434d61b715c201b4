"""CSV manifests: a ``path,identity`` header, then one row per image.

A manifest is the user's own list, so a path may point anywhere: relative paths are
relative to the manifest's folder (or to the ``root`` given to :func:`read_manifest`),
absolute paths are taken as they are. Only a row that leaves that folder (``../x``,
``/data/crawl/x.jpg``) must name an image file (extension jpg, jpeg, png, bmp, webp,
pgm, ppm): ``/etc/passwd`` or ``../../.ssh/id_rsa`` is listed in ``bad_files`` and never
read. What protects an output lives in the writers: every name they create stays inside
the output folder, and they never copy a file that is not an image
(:func:`cleanface.data.folder.write_folder`).

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

from cleanface.data._paths import IMAGE_EXTENSIONS, escaping_rows, image_named, inside
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


def _outside(path: str, root: str) -> bool:
    return not inside(os.path.normpath(os.path.join(root, path)), root)


def _read_rows(csv_path: Path) -> tuple[StringArray, np.ndarray, list[str], np.ndarray]:
    """Parse the manifest at ``csv_path``: paths, labels (first-appearance order), identity names, line numbers."""
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
    if len(paths) == 0:
        raise DataError(f"{name} has a header but no rows")
    return paths, labels, idents, linenos


def _refuse_outside_non_images(paths: StringArray, root: str, linenos: np.ndarray, keep: np.ndarray, bad: list[BadFile]) -> None:
    """Drop (``keep[i] = False``) the rows that leave ``root`` without naming an image file."""
    suspects = escaping_rows(paths) & ~image_named(paths)
    expected = ", ".join(sorted(IMAGE_EXTENSIONS))
    for i in np.flatnonzero(suspects).tolist():
        path = paths[i]
        if _outside(path, root):
            keep[i] = False
            bad.append(BadFile(path, f"path leaves the manifest folder {root} and does not name an image file (expected {expected}) (line {int(linenos[i])}); not read"))


def _check_files(paths: StringArray, root: str, linenos: np.ndarray, keep: np.ndarray, bad: list[BadFile], title: str, silent: bool) -> None:
    """Drop the rows whose file is missing, empty or not a regular file (one ``stat`` each)."""
    with make_progress(silent=silent) as progress:
        task = progress.add_task(f"checking files of {title}", total=len(paths))
        for i, path in enumerate(paths):
            if keep[i]:
                reason = _missing(os.path.join(root, path))
                if reason is not None:
                    keep[i] = False
                    bad.append(BadFile(os.path.join(root, path), f"{reason} (line {int(linenos[i])})"))
            if i % 4096 == 0:
                progress.update(task, completed=i)
        progress.update(task, completed=len(paths))


def read_manifest(
    csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None, check_files: bool = True, silent: bool = True
) -> DatasetIndex:
    """Index a ``path,identity`` CSV manifest.

    Parameters
    ----------
    csv_path : path-like
        The manifest. The header names the columns (``path`` and ``identity``; other
        columns are ignored). Paths are absolute, or relative to ``root``.
    root : path-like, optional
        The folder relative paths start from; default the manifest's folder.
    check_files : bool
        Check that every file exists (one ``stat`` per row); missing ones go to
        ``bad_files``. Turn off for very large manifests whose files are known to exist.
    silent : bool
        No progress bar.

    Returns
    -------
    DatasetIndex
        ``kind="manifest"``, ``root`` the folder paths are relative to, identities
        numbered in sorted order, rows in file order, paths as written. Rows that leave
        that folder without naming an image file, and missing files, are in
        ``bad_files`` and not in the index.

    Raises
    ------
    DataError
        Unreadable file, bad header, a malformed row (with its line number), a ``root``
        that is not a folder, or no usable row.
    """
    csv_path = Path(csv_path)
    if root is not None and not os.path.isdir(root):
        raise DataError(f"manifest root {root} does not exist or is not a folder")
    paths, labels, idents, linenos = _read_rows(csv_path)
    base = os.path.abspath(csv_path.parent if root is None else root)
    bad: list[BadFile] = []
    keep = np.ones(len(paths), dtype=bool)
    _refuse_outside_non_images(paths, base, linenos, keep, bad)
    if check_files:
        _check_files(paths, base, linenos, keep, bad, csv_path.name, silent)
    if not keep.any():
        raise DataError(f"{csv_path}: none of its {len(paths)} rows points to a usable file; first problem: {bad[0].location}: {bad[0].reason}")
    order = sorted(range(len(idents)), key=lambda c: idents[c])
    remap = np.empty(len(idents), dtype=np.int64)
    remap[order] = np.arange(len(idents))
    index = DatasetIndex(base, "manifest", paths, remap[labels], [idents[c] for c in order], None, bad)
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


def _paths_for(index: DatasetIndex, base: str) -> StringArray:
    """The sample paths of ``index`` as written in a manifest in ``base``: relative inside it, absolute outside."""
    if index.kind == "rec":
        raise DataError(f"cannot write a manifest for the RecordIO dataset {index.root} without writing its images; use write_dataset(index, out, 'manifest')")
    root = os.path.abspath(index.root)
    if root == base and not escaping_rows(index.paths).any():
        return index.paths
    out = []
    for path in index.paths:
        full = os.path.normpath(os.path.join(root, path))
        out.append(os.path.relpath(full, base) if inside(full, base) else full)
    return StringArray.from_list(out)


def write_manifest(index: DatasetIndex, out_csv: str | os.PathLike, *, paths: StringArray | None = None) -> Path:
    """Write ``index`` as a ``path,identity`` manifest (atomically). Only the CSV is written, no image.

    Parameters
    ----------
    index : DatasetIndex
        File-based samples (``folder`` or ``manifest``).
    out_csv : path-like
        The manifest to write. Sample files inside its folder are written relative to
        it, the others as absolute paths.
    paths : StringArray, optional
        Paths to write instead, already relative to ``out_csv``'s folder (used when
        the images are written beside the manifest).
    """
    from cleanface._atomic import atomic_write

    out_csv = Path(out_csv)
    if paths is None:
        paths = _paths_for(index, os.path.abspath(out_csv.parent))
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
