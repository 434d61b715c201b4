"""Path and name helpers shared by the dataset formats (no format logic here).

* :func:`safe_name` / :func:`unique_name`: names that are safe to create inside an output folder;
* :data:`IMAGE_EXTENSIONS`, :func:`has_image_extension`, :func:`image_named`: what counts as an image file name;
* :func:`inside`, :func:`escaping_rows`: whether a location stays inside a folder;
* :func:`check_not_source`: an output folder must not hold the dataset being written.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import numpy as np

from cleanface.data.strings import StringArray
from cleanface.errors import DataError

if TYPE_CHECKING:
    from cleanface.data.index import DatasetIndex

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm"})
_MAX_NAME_BYTES = 200
_SLASH, _DOT = ord("/"), ord(".")


# -- names created in an output folder -------------------------------------------------
def safe_name(name: str) -> str:
    """A file-system-safe, deterministic version of an identity or file name.

    ``/`` and NUL become ``_``; ``.``, ``..``, the empty name and names starting with
    ``.`` (hidden, skipped by the folder reader) get a ``_`` prefix; names longer than
    200 bytes are cut and suffixed with a hash of the full name. Other names, including
    ones that are not valid UTF-8 (held with surrogate escapes), are kept as they are.
    The result is always one path component: it cannot leave the folder it is created in.
    """
    out = name.replace("/", "_").replace("\0", "_")
    if out == "" or out.startswith("."):
        out = "_" + out
    raw = out.encode("utf-8", "surrogateescape")
    if len(raw) > _MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        stem = raw[: _MAX_NAME_BYTES - 13].decode("utf-8", "ignore")
        out = f"{stem}~{digest}"
    return out


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem~2.ext``, ``stem~3.ext``... (first one not in ``taken``)."""
    if name not in taken:
        return name
    stem, ext = os.path.splitext(name)
    k = 2
    while f"{stem}~{k}{ext}" in taken:
        k += 1
    return f"{stem}~{k}{ext}"


# -- image file names -------------------------------------------------------------------
def has_image_extension(path: str) -> bool:
    """Whether the file name of ``path`` is a name followed by one of :data:`IMAGE_EXTENSIONS` (any case).

    ``a.JPG`` and ``x/b.png`` are; ``.png`` (nothing before the extension) and ``a.png/`` are not.
    """
    base = path.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in IMAGE_EXTENSIONS


def image_named(paths: StringArray) -> np.ndarray:
    """:func:`has_image_extension` of every string of ``paths``, vectorised: shape (N,) bool.

    Looks only at the last 4 or 5 bytes of each string (no per-row Python object), so it
    costs a few bytes per row even for millions of rows.
    """
    blob, ends = paths.blob, paths.offsets[1:]
    lengths = np.diff(paths.offsets)
    out = np.zeros(len(paths), dtype=bool)
    for k in sorted({len(e) for e in IMAGE_EXTENSIONS}):
        rows = np.flatnonzero(lengths > k)  # a name, not just the extension
        if len(rows) == 0:
            continue
        start = ends[rows] - k
        tail = blob[start[:, None] + np.arange(k)]
        tail = np.where((tail >= ord("A")) & (tail <= ord("Z")), tail + 32, tail)
        wanted = np.array([list(e.encode()) for e in IMAGE_EXTENSIONS if len(e) == k], dtype=np.uint8)
        match = (tail[:, None, :] == wanted[None, :, :]).all(axis=2).any(axis=1)
        out[rows] |= match & (blob[start - 1] != _SLASH)
    return out


# -- confinement ------------------------------------------------------------------------
def inside(path: str, root: str) -> bool:
    """Whether the normalised absolute ``path`` is ``root`` or lies under it (both absolute, normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def escaping_rows(paths: StringArray) -> np.ndarray:
    """Rows whose path is absolute or has a ``..`` component (the only ones that may leave their root), shape (N,) bool."""
    blob, offs = paths.blob, paths.offsets
    flagged = np.zeros(len(paths), dtype=bool)
    nonempty = offs[1:] > offs[:-1]
    flagged[nonempty] = blob[offs[:-1][nonempty]] == _SLASH
    if len(blob) >= 2:
        dots = np.flatnonzero((blob[:-1] == _DOT) & (blob[1:] == _DOT))
        if len(dots):
            row = np.searchsorted(offs, dots, side="right") - 1
            start_ok = (dots == offs[row]) | (blob[np.maximum(dots - 1, 0)] == _SLASH)
            end = dots + 2
            end_ok = (end == offs[row + 1]) | (blob[np.minimum(end, len(blob) - 1)] == _SLASH)
            hit = start_ok & end_ok & (end <= offs[row + 1])
            flagged[row[hit]] = True
    return flagged


def _source_folders(index: "DatasetIndex") -> tuple[str, ...]:
    """The root of ``index``, and the folders of its samples that lie outside that root."""
    root = os.path.abspath(index.root)
    if index.kind == "rec":
        return (root,)
    folders = {root}
    for i in np.flatnonzero(escaping_rows(index.paths)).tolist():
        folders.add(os.path.dirname(os.path.normpath(os.path.join(root, index.paths[i]))))
    return tuple(sorted(folders))


def check_not_source(index: "DatasetIndex", out: str | os.PathLike) -> None:
    """A :class:`DataError` when writing to ``out`` would replace a folder holding samples of ``index``."""
    out_abs = os.path.abspath(out)
    for folder in _source_folders(index):
        if inside(folder, out_abs):
            where = "" if folder == os.path.abspath(index.root) else f" (images under {folder})"
            raise DataError(f"cannot write into {out}: it holds the source dataset {index.root}{where}")
