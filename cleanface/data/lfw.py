"""LFW protocol files: people lists, pair lists, and an index restricted to a people list.

Formats (whitespace-separated, as distributed with LFW):

* ``peopleDevTrain.txt`` / ``peopleDevTest.txt``: a count line, then ``name  n_images`` lines.
* ``people.txt``: a fold-count line, then per fold a count line and its ``name  n_images`` lines.
* ``pairsDevTrain.txt`` / ``pairsDevTest.txt``: a count line ``n``, then ``n`` matched pairs
  (``name  i  j``) and ``n`` mismatched pairs (``name1  i  name2  j``).
* ``pairs.txt``: ``folds  n``, then per fold ``n`` matched and ``n`` mismatched pairs.

Image ``i`` of ``name`` is ``<name>/<name>_<iiii>.jpg`` (1-based, four digits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanface.data.index import BadFile, DatasetIndex
from cleanface.errors import DataError

_IMAGE_DIRS = ("images_deepfunneled", "lfw_funneled", "lfw-deepfunneled", "lfw")


def _lines(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """Non-blank lines of ``path`` as ``(line number, fields)``."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


_MAX_NUMBER = 10**6  # counts and image numbers above this are mistakes (LFW's largest is 530), not data


def _int(path: str | os.PathLike, lineno: int, value: str, what: str, *, minimum: int = 0) -> int:
    try:
        out = int(value)
    except ValueError:
        raise DataError(f"{path} line {lineno}: {what} must be an integer, got {value[:40]!r}") from None
    if out < minimum:
        raise DataError(f"{path} line {lineno}: {what} must be at least {minimum}, got {out}")
    if out > _MAX_NUMBER:
        raise DataError(f"{path} line {lineno}: {what} must be at most {_MAX_NUMBER:,}, got {value[:40]}")
    return out


def _name(path: str | os.PathLike, lineno: int, value: str) -> str:
    """A person's name, which becomes a folder name: no ``/``, NUL, ``.`` or ``..`` (nothing outside the images folder)."""
    if value in (".", "..") or "/" in value or "\0" in value:
        raise DataError(f"{path} line {lineno}: {value[:60]!r} is not a person's name (it would point outside the images folder)")
    return value


def _take(path: str | os.PathLike, lines: list[tuple[int, list[str]]], pos: int, count: int) -> None:
    if pos + count > len(lines):
        last = lines[-1][0] if lines else 0
        raise DataError(f"{path} line {last}: file ends after {len(lines) - pos} of {count} expected entries")


def read_people(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Read a people list (``people.txt`` with its folds, or ``peopleDev*.txt``).

    Returns
    -------
    list of (name, number of images)
        In file order, all folds concatenated.
    """
    lines = _lines(path)
    if not lines:
        raise DataError(f"{path} is empty; expected a people list")
    lineno, fields = lines[0]
    if len(fields) != 1:
        raise DataError(f"{path} line {lineno}: expected a count line, got {' '.join(fields)[:60]!r}")
    first = _int(path, lineno, fields[0], "count")
    multi_fold = len(lines) > 1 and len(lines[1][1]) == 1
    groups = first if multi_fold else 1
    pos = 1
    out: list[tuple[str, int]] = []
    for _ in range(groups):
        if multi_fold:
            if pos >= len(lines):
                raise DataError(f"{path} line {lines[-1][0]}: file ends before all {groups} folds")
            lineno, fields = lines[pos]
            if len(fields) != 1:
                raise DataError(f"{path} line {lineno}: expected a fold count line, got {' '.join(fields)[:60]!r}")
            count = _int(path, lineno, fields[0], "fold count")
            pos += 1
        else:
            count = first
        _take(path, lines, pos, count)
        for lineno, fields in lines[pos : pos + count]:
            if len(fields) != 2:
                raise DataError(f"{path} line {lineno}: expected 'name  n_images', got {' '.join(fields)[:60]!r}")
            out.append((_name(path, lineno, fields[0]), _int(path, lineno, fields[1], "image count", minimum=1)))
        pos += count
    if pos != len(lines):
        raise DataError(f"{path} line {lines[pos][0]}: unexpected extra line after {len(out)} entries")
    return out


@dataclass(frozen=True)
class Pairs:
    """Verification pairs, all arrays of shape (P,).

    Attributes
    ----------
    name1, name2 : ndarray of str
    n1, n2 : ndarray of int64
        1-based image numbers.
    same : ndarray of bool
        True for a matched pair (same person).
    fold : ndarray of int64
        Fold of each pair in ``[0, folds)``.
    """

    name1: np.ndarray
    n1: np.ndarray
    name2: np.ndarray
    n2: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.same)

    @property
    def num_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


def read_pairs(path: str | os.PathLike) -> Pairs:
    """Read ``pairs.txt`` (``folds n`` header) or ``pairsDev*.txt`` (``n`` header).

    Each fold holds ``n`` matched pairs followed by ``n`` mismatched pairs.
    """
    lines = _lines(path)
    if not lines:
        raise DataError(f"{path} is empty; expected a pairs list")
    lineno, fields = lines[0]
    if len(fields) == 2:
        folds = _int(path, lineno, fields[0], "fold count", minimum=1)
        per = _int(path, lineno, fields[1], "pairs per fold")
    elif len(fields) == 1:
        folds, per = 1, _int(path, lineno, fields[0], "pair count")
    else:
        raise DataError(f"{path} line {lineno}: expected 'n' or 'folds n', got {' '.join(fields)[:60]!r}")
    _take(path, lines, 1, folds * 2 * per)
    if len(lines) != 1 + folds * 2 * per:
        raise DataError(f"{path} line {lines[1 + folds * 2 * per][0]}: unexpected extra line after {folds * 2 * per} pairs")
    name1, n1, name2, n2, same, fold = [], [], [], [], [], []
    for k, (lineno, fields) in enumerate(lines[1:]):
        matched = (k % (2 * per)) < per
        if matched:
            if len(fields) != 3:
                raise DataError(f"{path} line {lineno}: expected a matched pair 'name  i  j', got {' '.join(fields)[:60]!r}")
            a, i, b, j = fields[0], fields[1], fields[0], fields[2]
        else:
            if len(fields) != 4:
                raise DataError(f"{path} line {lineno}: expected a mismatched pair 'name1  i  name2  j', got {' '.join(fields)[:60]!r}")
            a, i, b, j = fields
        name1.append(_name(path, lineno, a))
        name2.append(_name(path, lineno, b))
        n1.append(_int(path, lineno, i, "image number", minimum=1))
        n2.append(_int(path, lineno, j, "image number", minimum=1))
        same.append(matched)
        fold.append(k // (2 * per))
    return Pairs(
        np.array(name1, dtype=str),
        np.array(n1, dtype=np.int64),
        np.array(name2, dtype=str),
        np.array(n2, dtype=np.int64),
        np.array(same, dtype=bool),
        np.array(fold, dtype=np.int64),
    )


def image_path(name: str, number: int) -> str:
    """``<name>/<name>_<number:04d>.jpg``."""
    return f"{name}/{name}_{int(number):04d}.jpg"


def images_folder(root: str | os.PathLike) -> Path:
    """``root`` itself, or its ``images_deepfunneled`` (or similar) sub-folder when ``root`` is the LFW folder."""
    root = Path(root)
    for sub in _IMAGE_DIRS:
        if (root / sub).is_dir():
            return root / sub
    return root


def pair_paths(pairs: Pairs, images_root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Absolute image paths of both sides of every pair, each a list of length P."""
    root = images_folder(images_root)
    first = [str(root / image_path(a, i)) for a, i in zip(pairs.name1.tolist(), pairs.n1.tolist())]
    second = [str(root / image_path(b, j)) for b, j in zip(pairs.name2.tolist(), pairs.n2.tolist())]
    return first, second


def lfw_index(images_root: str | os.PathLike, people_file: str | os.PathLike, *, min_images: int = 1) -> DatasetIndex:
    """Index the LFW images of the people in ``people_file`` having at least ``min_images`` images.

    Parameters
    ----------
    images_root : path-like
        The folder of ``<name>/`` sub-folders (or the LFW folder holding ``images_deepfunneled``).
    people_file : path-like
        A people list (:func:`read_people`).
    min_images : int
        Keep people with at least this many images.

    Returns
    -------
    DatasetIndex
        ``kind="folder"``, identities sorted by name; listed images that are missing are in ``bad_files``.
    """
    if min_images < 1:
        raise DataError(f"min_images must be at least 1, got {min_images}")
    root = images_folder(images_root)
    if not root.is_dir():
        raise DataError(f"LFW image folder {root} does not exist")
    counts: dict[str, int] = {}
    for name, n in read_people(people_file):
        counts[name] = max(counts.get(name, 0), n)
    chosen = sorted(name for name, n in counts.items() if n >= min_images)
    if not chosen:
        raise DataError(f"no person in {people_file} has at least {min_images} images")
    paths, idents, bad = [], [], []
    for name in chosen:
        for k in range(1, counts[name] + 1):
            rel = image_path(name, k)
            if (root / rel).is_file():
                paths.append(rel)
                idents.append(name)
            else:
                bad.append(BadFile(str(root / rel), "listed in the people file but missing"))
    if not paths:
        raise DataError(f"none of the images listed in {people_file} exist under {root}")
    names = sorted(set(idents))
    return DatasetIndex.from_lists(root, "folder", paths, idents, names=names, bad_files=bad)
