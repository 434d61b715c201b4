"""Verification pair protocols: LFW-format pairs files and insightface ``.bin`` files.

* An LFW-format file (``pairs.txt``, ``pairsDevTest.txt``, or one written by
  :func:`cleanface.data.synthetic.make_pairs`) names images ``<root>/<name>/<name>_<NNNN>.<ext>``;
  the extension is whatever exists (``jpg``, ``jpeg``, ``png``, ``bmp``, ``webp``, ``pgm``,
  ``ppm``), found by listing each identity folder once.
* An insightface ``.bin`` file (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...) is a
  pickle of ``(bins, issame_list)``: ``2 * P`` encoded images, pair ``p`` being
  ``(bins[2p], bins[2p + 1])``. It is unpickled by :class:`SafeUnpickler`, which only
  rebuilds bytes, lists, tuples, booleans and numpy arrays: a pickle naming any other
  callable (``os.system``...) is refused before anything runs.

:func:`evaluate` embeds both sides of every pair with a backbone and scores them with
:func:`cleanface.eval.verification.verify`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cleanface.data.images import decode_image
from cleanface.data.lfw import images_folder, read_pairs
from cleanface.errors import DataError
from cleanface.eval.verification import verify
from cleanface.progress import make_progress

#: Image extensions looked for beside an LFW-style name, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "pgm", "ppm")
#: Images decoded (then embedded) at a time by :func:`evaluate`.
CHUNK = 2048

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
} | {("builtins", name) for name in ("bytes", "bytearray", "list", "tuple", "bool", "int", "float", "str", "set", "frozenset", "dict")}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed for a ``.bin`` file.

    Parameters
    ----------
    file : binary file
    where : str
        The file's name, for error messages.
    **kwargs
        Passed to :class:`pickle.Unpickler` (e.g. ``encoding``).
    """

    def __init__(self, file, *, where: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)
        if key not in _SAFE_GLOBALS:
            raise DataError(f"{self.where}: refusing to unpickle {key[0]}.{name}; a .bin file holds only encoded images and flags")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core under numpy 2
            return super().find_class(module, name)


def _unpickle(path: Path, encoding: str) -> Any:
    with open(path, "rb") as handle:
        return SafeUnpickler(handle, where=str(path), encoding=encoding).load()


def _encoded(item: Any, path: Path, k: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise DataError(f"{path}: image {k} is a {type(item).__name__} ({getattr(item, 'dtype', '')}), expected encoded image bytes")


def load_bin(path: str | os.PathLike, *, folds: int = 10) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray]:
    """Read an insightface ``.bin`` verification file safely.

    Parameters
    ----------
    path : path-like
    folds : int
        Number of contiguous blocks the pairs are split into.

    Returns
    -------
    images_a, images_b : list of bytes
        Encoded images of both sides of each pair.
    same : ndarray of bool, shape (P,)
    fold : ndarray of int64, shape (P,)
    """
    path = Path(path)
    try:
        try:
            obj = _unpickle(path, "ASCII")
            if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], list) and obj[0] and isinstance(obj[0][0], str):
                obj = _unpickle(path, "bytes")  # python 2 pickle of ASCII-only strings
        except UnicodeDecodeError:
            obj = _unpickle(path, "bytes")  # python 2 pickle: str holds the encoded bytes
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except DataError:
        raise
    except Exception as exc:  # pickle raises many kinds on corrupt input
        raise DataError(f"{path} is not a readable insightface .bin pickle: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2 or not all(isinstance(x, (list, tuple, np.ndarray)) for x in obj):
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if len(issame) == 0:
        raise DataError(f"{path} holds no pairs")
    try:
        flags = np.asarray(issame)
    except ValueError:
        flags = np.asarray(issame, dtype=object)
    if flags.ndim != 1 or not (flags.dtype == np.bool_ or (np.issubdtype(flags.dtype, np.integer) and np.isin(flags, (0, 1)).all())):
        raise DataError(f"{path}: issame_list must be a list of booleans, got {flags.dtype} of shape {flags.shape}")
    if len(bins) != 2 * len(flags):
        raise DataError(f"{path}: {len(bins)} images for {len(flags)} pairs; expected {2 * len(flags)}")
    encoded = [_encoded(b, path, k) for k, b in enumerate(bins)]
    n = len(flags)
    return encoded[0::2], encoded[1::2], flags.astype(bool), _blocks(n, folds)


def _blocks(n: int, folds: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * max(1, min(int(folds), n)) // max(n, 1)


def _pair_lines(path: Path) -> list[int]:
    """Line numbers of the pair lines of a pairs file (non-blank lines after the header)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [n for n, line in enumerate(text.splitlines(), 1) if line.strip()][1:]


class _Resolver:
    """Finds ``<root>/<name>/<name>_<NNNN>.<ext>``, listing each identity folder once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, dict[str, str]] = {}

    def _listing(self, name: str) -> dict[str, str]:
        if name not in self.folders:
            found: dict[str, tuple[int, str]] = {}
            try:
                with os.scandir(self.root / name) as entries:
                    for entry in entries:
                        stem, dot, ext = entry.name.rpartition(".")
                        ext = ext.lower()
                        if dot and ext in IMAGE_EXTENSIONS:
                            rank = IMAGE_EXTENSIONS.index(ext)
                            if stem not in found or rank < found[stem][0]:
                                found[stem] = (rank, entry.name)
            except OSError:
                pass
            self.folders[name] = {stem: file for stem, (_, file) in found.items()}
        return self.folders[name]

    def __call__(self, name: str, number: int) -> str | None:
        file = self._listing(name).get(f"{name}_{int(number):04d}")
        return str(self.root / name / file) if file else None


def load_lfw_pairs(
    path: str | os.PathLike, images_root: str | os.PathLike | None = None, *, folds: int = 10
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Read an LFW-format pairs file and find its images.

    Parameters
    ----------
    path : path-like
        ``pairs.txt`` (its own folds are kept) or a single-fold file such as ``pairsDevTest.txt``.
    images_root : path-like, optional
        The folder of ``<name>/`` sub-folders, or the LFW folder holding
        ``images_deepfunneled``; by default the folder of ``path``.
    folds : int
        For a single-fold file: the matched and the mismatched pairs are each cut into
        ``folds`` contiguous blocks, block ``k`` of both forming fold ``k``.

    Returns
    -------
    images_a, images_b : list of str
        Image paths of both sides of each pair.
    same : ndarray of bool, shape (P,)
    fold : ndarray of int64, shape (P,)

    Raises
    ------
    DataError
        Unreadable or malformed file, or an image that does not exist (naming it and the line).
    """
    path = Path(path)
    pairs = read_pairs(path)
    root = images_folder(images_root if images_root is not None else path.parent)
    if not root.is_dir():
        raise DataError(f"image folder {root} for {path} does not exist")
    resolve = _Resolver(root)
    sides: list[list[str]] = [[], []]
    for k, (a, i, b, j) in enumerate(zip(pairs.name1.tolist(), pairs.n1.tolist(), pairs.name2.tolist(), pairs.n2.tolist())):
        for side, (name, number) in enumerate(((a, i), (b, j))):
            found = resolve(name, number)
            if found is None:
                expected = root / name / f"{name}_{int(number):04d}.jpg"
                others = ", ".join(f".{e}" for e in IMAGE_EXTENSIONS[1:])
                raise DataError(f"{path} line {_pair_lines(path)[k]}: image {expected} not found (also tried {others})")
            sides[side].append(found)
    fold = pairs.fold
    if pairs.num_folds < 2:
        fold = np.empty(len(pairs), dtype=np.int64)
        for flag in (True, False):
            idx = np.flatnonzero(pairs.same == flag)
            fold[idx] = _blocks(len(idx), folds)
    return sides[0], sides[1], pairs.same.copy(), fold


def is_bin_file(path: str | os.PathLike) -> bool:
    """True for an insightface ``.bin`` pickle (by suffix, or a pickle protocol byte at the start)."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(1) == b"\x80"
    except OSError:
        return False


def load_pairs(
    pairs: str | os.PathLike, images_root: str | os.PathLike | None = None, *, folds: int = 10
) -> tuple[list[str] | list[bytes], list[str] | list[bytes], np.ndarray, np.ndarray]:
    """Load verification pairs from an LFW-format pairs file or an insightface ``.bin``.

    Parameters
    ----------
    pairs : path-like
    images_root : path-like, optional
        Image folder of an LFW-format file (see :func:`load_lfw_pairs`); unused for ``.bin``.
    folds : int
        Folds to make when the file does not define them (``.bin`` files, single-fold lists).

    Returns
    -------
    images_a, images_b : list of str (image paths) or list of bytes (encoded images)
    same : ndarray of bool, shape (P,)
    fold : ndarray of int64, shape (P,)
    """
    if not Path(pairs).is_file():
        raise DataError(f"pairs file {pairs} does not exist")
    if is_bin_file(pairs):
        return load_bin(pairs, folds=folds)
    return load_lfw_pairs(pairs, images_root, folds=folds)


def _read(item: str | bytes) -> bytes:
    if isinstance(item, bytes):
        return item
    try:
        with open(item, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DataError(f"cannot read image {item}: {exc.strerror or exc}") from None


def evaluate_embeddings(emb_a, emb_b, same, fold=None, *, folds: int = 10) -> dict:
    """Verification results of pairs given by the embeddings of their two sides.

    Parameters
    ----------
    emb_a, emb_b : array-like of float, shape (P, D)
        Rows are L2-normalised here, so the score is the cosine similarity.
    same : array-like of bool, shape (P,)
    fold : array-like of int, shape (P,), optional
    folds : int

    Returns
    -------
    dict
        :func:`cleanface.eval.verification.verify` results.
    """
    a, b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"pair embeddings must be two (P, D) arrays of one shape, got {a.shape} and {b.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return verify(scores, same, folds=folds, fold=fold)


def evaluate(
    backbone,
    pairs: str | os.PathLike,
    *,
    images_root: str | os.PathLike | None = None,
    size: int,
    crop: int | None = None,
    device: Any = "cpu",
    batch_size: int = 256,
    folds: int = 10,
    silent: bool = True,
) -> dict:
    """Embed the images of a pairs file with ``backbone`` and compute verification results.

    Parameters
    ----------
    backbone : nn.Module
        Moved to ``device``; run in eval mode (its mode is restored afterwards).
    pairs : path-like
        LFW-format pairs file or insightface ``.bin`` (:func:`load_pairs`).
    images_root : path-like, optional
    size, crop : int, int or None
        Decoding settings (:func:`cleanface.data.images.decode_image`), as in training.
    device : str or torch.device
    batch_size : int
    folds : int
    silent : bool
        No progress bar.

    Returns
    -------
    dict
        ``{"pairs": str(pairs), **verify(...)}``: the ``eval.json`` content.
    """
    from cleanface.inference.embed import embed_arrays  # torch is imported only when embedding

    images_a, images_b, same, fold = load_pairs(pairs, images_root, folds=folds)
    slot: dict[str | bytes, int] = {}
    where: list[str] = []
    for p, pair in enumerate(zip(images_a, images_b)):
        for side, item in enumerate(pair):
            if item not in slot:
                slot[item] = len(slot)
                where.append(item if isinstance(item, str) else f"{pairs} image {2 * p + side}")
    distinct = list(slot)
    backbone.to(device)
    parts = []
    with make_progress(silent=silent) as bar:
        task = bar.add_task("embed pairs", total=len(distinct))
        for start in range(0, len(distinct), CHUNK):
            chunk = distinct[start : start + CHUNK]
            images = np.empty((len(chunk), size, size, 3), dtype=np.uint8)
            for j, item in enumerate(chunk):
                images[j] = decode_image(_read(item), size=size, crop=crop, where=where[start + j])
                bar.update(task, advance=1)
            parts.append(embed_arrays(backbone, images, batch_size=batch_size, flip=True, device=device))
    emb = np.concatenate(parts).astype(np.float64)
    ia = np.fromiter((slot[x] for x in images_a), dtype=np.int64, count=len(images_a))
    ib = np.fromiter((slot[x] for x in images_b), dtype=np.int64, count=len(images_b))
    return {"pairs": str(pairs), **evaluate_embeddings(emb[ia], emb[ib], same, fold, folds=folds)}
