"""Reading embeddings from disk, without torch: :func:`read_embeddings_file` and :func:`read_embeddings`.

An embeddings file of ``cleanface embed`` (:func:`cleanface.inference.embed.embed_index`)
is ``embeddings.npy`` (N, D), memory-mappable, with ``embeddings.json`` beside it
(fingerprint of the dataset it embeds, count, dtype, model stamp); a file written for
another dataset is refused with one line.

:func:`read_embeddings` also reads embeddings made by any other tool, matched to the
dataset's images by path. Layouts, told apart by the given path:

``DIR`` or ``NAME.npy`` with ``NAME.json`` beside it
    written by ``cleanface embed``: rows in the dataset's order, checked by fingerprint;
``NAME.npy`` (N, D) with a list of paths
    the list is ``--paths FILE`` (``paths=``) or, when not given, ``NAME.paths.txt``
    beside the array: UTF-8 text, one image path per line, line i naming row i; an explicit
    list wins over ``NAME.json``, which wins over ``NAME.paths.txt``;
``NAME.csv``
    a header row with a ``path`` column, then one row per image; the vector is either one
    column ``embedding`` holding the numbers separated by commas, semicolons or spaces
    (``"[0.1, -0.2, ...]"``: brackets are ignored), or, without such a column, every other
    column in file order (columns ``identity`` and ``label`` are ignored);
``NAME.parquet`` (or ``.pq``; needs pyarrow)
    the same columns: ``path`` (string) and either ``embedding`` (a list or fixed-size list
    of numbers) or numeric columns.

A path is absolute or relative to the dataset root (the folder of a folder dataset, the
folder of a manifest; for RecordIO the ``<identity>/<record key>.jpg`` names of its
index). Both sides are normalised (``a/./b``, ``a/../b``; an absolute path through a
resolved root matches one through the root as given) before matching. Every image of the
dataset needs exactly one row; a row naming a file that indexing set aside
(``index.bad_files``) is ignored, any other row naming no image is an error. NaN rows are
allowed (purify drops them as non-finite embeddings).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError


def read_embeddings_file(path: str | os.PathLike, index: DatasetIndex) -> np.ndarray:
    """Embeddings written by ``embed_index`` (a directory or its ``embeddings.npy``), memory-mapped.

    The ``embeddings.json`` beside it must carry the fingerprint of ``index`` and its count.
    """
    path = Path(path)
    npy = path / "embeddings.npy" if path.is_dir() else path
    meta_path = npy.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path} beside the embeddings {npy}: {exc}") from None
    fingerprint = meta.get("fingerprint", meta.get("index_fingerprint"))
    if fingerprint != index.fingerprint():
        raise DataError(f"embeddings {npy} were computed for another dataset (fingerprint {fingerprint}, this dataset {index.fingerprint()}); embed this dataset again")
    try:
        emb = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read embeddings {npy}: {exc}") from None
    if emb.ndim != 2 or len(emb) != len(index):
        raise DataError(f"embeddings {npy} have shape {emb.shape} but the dataset has {len(index)} images")
    return emb


PATHS_SUFFIX = ".paths.txt"  # NAME.npy -> NAME.paths.txt
VECTOR_COLUMN = "embedding"
IGNORED_COLUMNS = ("identity", "label")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_embeddings(path: str | os.PathLike, index: DatasetIndex, *, paths: str | os.PathLike | None = None) -> np.ndarray:
    """Embeddings (N, D) of every image of ``index``, in index order, from any layout of the module docstring.

    ``paths``: the path list of an ``.npy`` from another tool (default: ``NAME.paths.txt``
    beside it). A :class:`DataError` of one line names what does not fit.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if paths is not None and (path.is_dir() or suffix != ".npy"):
        raise DataError(f"a paths list ({paths}) goes with an .npy array, not with {path}")
    if path.is_dir():
        return read_embeddings_file(path, index)
    if suffix == ".csv":
        rows, emb = read_embeddings_csv(path)
    elif suffix in PARQUET_SUFFIXES:
        rows, emb = read_embeddings_parquet(path)
    elif suffix == ".npy":
        listing = Path(paths) if paths is not None else path.with_name(path.stem + PATHS_SUFFIX)
        if paths is None and path.with_suffix(".json").is_file():
            return read_embeddings_file(path, index)
        if not listing.is_file():
            raise DataError(f"embeddings {path} have no {path.with_suffix('.json').name} beside them (written by cleanface embed) "
                            f"and no list of their images: pass --paths FILE (one image path per line) or write {listing.name} beside them")
        emb = _load_npy(path)
        rows = read_path_list(listing)
        if len(rows) != len(emb):
            raise DataError(f"embeddings {path} have {len(emb)} rows but {listing} lists {len(rows)} paths; give one path per row")
    else:
        raise DataError(f"cannot read embeddings from {path}: expected a directory written by cleanface embed, an .npy, a .csv or a .parquet file")
    order = align_rows(rows, index, str(path))
    if len(emb) == len(order) and np.array_equal(order, np.arange(len(order))):
        return emb
    return np.asarray(emb[order])


def _load_npy(path: Path) -> np.ndarray:
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read embeddings {path}: {exc}") from None
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise DataError(f"embeddings {path} must be a 2-d float array (images, dimensions), got {emb.dtype} of shape {emb.shape}")
    return emb


def read_path_list(path: str | os.PathLike) -> list[str]:
    """The lines of a paths list (UTF-8, ``\\n`` or ``\\r\\n``; a last empty line is no entry); an empty line is an error."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read the paths list {path}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    empty = next((i for i, line in enumerate(lines) if not line.strip()), None)
    if empty is not None:
        raise DataError(f"line {empty + 1} of the paths list {path} is empty; give one image path per line")
    return lines


def _path_key(root: str) -> Callable[[str], str]:
    """A function normalising a path (absolute, or relative to ``root``) to an absolute one, through ``root`` as given."""
    real = os.path.realpath(root)

    def key(p: str) -> str:
        q = os.path.normpath(os.path.join(root, p))
        if real != root and (q == real or q.startswith(real + os.sep)):
            q = root + q[len(real):]
        return q

    return key


def align_rows(row_paths: Sequence[str], index: DatasetIndex, source: str) -> np.ndarray:
    """For each image of ``index``, the row of ``row_paths`` naming it: (N,) int64; one-line :class:`DataError` otherwise."""
    n = len(index)
    if len(row_paths) == n and list(row_paths) == index.paths.tolist():
        return np.arange(n, dtype=np.int64)
    key = _path_key(os.path.abspath(index.root))
    lookup = {key(p): i for i, p in enumerate(index.paths)}
    set_aside = {key(b.location) for b in index.bad_files}
    order = np.full(n, -1, dtype=np.int64)
    extra, first_extra = 0, None
    for r, p in enumerate(row_paths):
        k = key(p)
        i = lookup.get(k, -1)
        if i < 0:
            if k not in set_aside:
                extra += 1
                if first_extra is None:
                    first_extra = f"row {r + 1}, {p!r}"
        elif order[i] >= 0:
            raise DataError(f"rows {order[i] + 1} and {r + 1} of embeddings {source} both name image {index.paths[i]}; give each image one row")
        else:
            order[i] = r
    missing = np.flatnonzero(order < 0)
    if len(missing) or extra:
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} of {n} images have no embedding (first: {index.paths[int(missing[0])]})")
        if extra:
            parts.append(f"{extra} of {len(row_paths)} rows name no image of the dataset (first: {first_extra})")
        raise DataError(f"embeddings {source} do not match dataset {index.root}: {'; '.join(parts)}; "
                        "name every image once, by its path relative to the dataset root or absolute")
    return order


def _vector(text: str) -> list[str]:
    return [t for t in re.split(r"[,;\s]+", text.strip().strip("[]()")) if t]


def read_embeddings_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The ``path`` column and the vectors (float32) of an embeddings CSV (see the module docstring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if "path" not in header:
                raise DataError(f"embeddings {path} have no 'path' column (columns: {', '.join(header[:8]) or 'none'})")
            p = header.index("path")
            v = header.index(VECTOR_COLUMN) if VECTOR_COLUMN in header else None
            rows, vectors = [], []
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise DataError(f"line {line} of embeddings {path} has {len(row)} fields, the header {len(header)}")
                rows.append(row[p])
                if v is not None:
                    vectors.append(_vector(row[v]))
        if v is not None:
            if len({len(x) for x in vectors}) > 1:
                raise DataError(f"the '{VECTOR_COLUMN}' column of embeddings {path} holds vectors of different lengths")
            return rows, np.array(vectors, dtype=np.float32).reshape(len(rows), -1)
        columns = [i for i, h in enumerate(header) if i != p and h not in IGNORED_COLUMNS]
        if not columns:
            raise DataError(f"embeddings {path} have no vector columns beside 'path'")
        values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=columns, dtype=np.float32, quotechar='"', ndmin=2, encoding="utf-8")
        return rows, values.reshape(len(rows), len(columns))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read embeddings {path}: {exc}") from None


def read_embeddings_parquet(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The ``path`` column and the vectors (float32) of an embeddings Parquet file (needs pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow, which is not installed: pip install pyarrow "
                        "(or give the embeddings as a .csv, or an .npy with a paths list)") from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read embeddings {path}: {exc}") from None
    names = table.column_names
    if "path" not in names:
        raise DataError(f"embeddings {path} have no 'path' column (columns: {', '.join(names[:8]) or 'none'})")
    rows = [str(x) for x in table.column("path").to_pylist()]
    if VECTOR_COLUMN in names:
        column = table.column(VECTOR_COLUMN).combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)):
            raise DataError(f"the '{VECTOR_COLUMN}' column of embeddings {path} must hold lists of numbers, not {column.type}")
        lengths = np.asarray(column.value_lengths().fill_null(-1))
        if column.null_count or len(set(lengths.tolist())) > 1:
            raise DataError(f"the '{VECTOR_COLUMN}' column of embeddings {path} holds missing vectors or vectors of different lengths")
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        return rows, values.reshape(len(rows), -1)
    columns = [c for c in names if c != "path" and c not in IGNORED_COLUMNS]
    wrong = [c for c in columns if not (pa.types.is_floating(table.schema.field(c).type) or pa.types.is_integer(table.schema.field(c).type))]
    if not columns or wrong:
        raise DataError(f"embeddings {path} need numeric vector columns beside 'path' ({'not numeric: ' + ', '.join(wrong[:3]) if wrong else 'none'})")
    values = np.column_stack([np.asarray(table.column(c).to_numpy(), dtype=np.float32) for c in columns])
    return rows, values.reshape(len(rows), len(columns))
