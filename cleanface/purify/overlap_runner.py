"""The overlap runner: which identities and which images of dataset A are also in dataset B.

:func:`overlap` opens both datasets (any format :func:`cleanface.data.open.open_dataset`
reads), takes their embeddings (given in any layout that
:func:`cleanface.inference.stored.read_embeddings` reads, or computed with the backbone
of one training run, flip-fused as ``cleanface embed`` does), calls :func:`cleanface.purify.overlap.find_overlap` and writes the
output directory through a staging directory, ``COMPLETE`` last. A lock beside the output
(``.<name>.lock``) refuses a second overlap into the same directory while one runs, and
an output that could touch either dataset is refused: the inputs are only read.

``identities.csv``
    one row per identity of A (:data:`IDENTITY_COLUMNS`): its nearest identity of B, their
    similarity ``q``, the calibrated probability that the two are one person (``score``)
    and ``shared`` (``score >= cut``); sorted by score, highest first, rows without a
    score last; undefined values are empty cells;
``images.csv``
    one row per pair (image of A, image of B) with cosine at least ``dup_cos``
    (:data:`IMAGE_COLUMNS`), sorted by the index of A, then of B;
``summary.json``
    ``inputs``, ``settings`` (``cut``, ``dup_cos``), ``counts`` (``images_a``, ``images_b``,
    ``identities_a``, ``identities_b``, ``shared_identities``, ``image_pairs``,
    ``images_a_in_b``: distinct images of A with a pair), ``calibration`` (the fit of
    :func:`find_overlap`, or ``{"used": false, "reason"}``) and ``elapsed_s``;
``embeddings/a``, ``embeddings/b``
    the embeddings computed here with the run (absent with given embeddings); kept in the
    staging directory, so an interrupted overlap resumes without embedding again.

No report is rendered: callers use :func:`cleanface.report.overlap.render_overlap_report`.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._atomic import RunLock, atomic_write, atomic_write_json, check_output_dir, file_sha256, mark_complete, remove_path, staging_dir
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError
from cleanface.inference.embed import embed_index
from cleanface.inference.run import LoadedRun, load_run, model_stamp
from cleanface.inference.stored import read_embeddings, read_embeddings_file
from cleanface.purify.overlap import Overlap, find_overlap
from cleanface.purify.runner import cached_in, check_files

IDENTITY_COLUMNS = ("identity_a", "images_a", "identity_b", "images_b", "similarity", "score", "shared")
IMAGE_COLUMNS = ("index_a", "location_a", "identity_a", "index_b", "location_b", "identity_b", "cos")
EMBED_DIR = "embeddings"
SOURCE_FILE = "source.json"
SIDES = ("a", "b")


# -- checks done before any work ------------------------------------------------------------------
def check_options(run: Any, embeddings_a: Any, embeddings_b: Any, paths_a: Any, paths_b: Any, cut: float, dup_cos: float) -> None:
    """A :class:`ConfigError` of one line unless exactly one of ``run`` / both embeddings is given and the settings fit."""
    if run is not None and (embeddings_a is not None or embeddings_b is not None):
        raise ConfigError("give either a training run to embed both datasets (run=, --run) or embeddings of both "
                          "(embeddings_a= and embeddings_b=, --embeddings-a and --embeddings-b), not both")
    if run is None and embeddings_a is None and embeddings_b is None:
        raise ConfigError("overlap needs embeddings of both datasets: give a training run to embed them (run=, --run), "
                          "or embeddings of each (embeddings_a= and embeddings_b=, --embeddings-a and --embeddings-b)")
    if run is None and (embeddings_a is None) != (embeddings_b is None):
        have, missing = ("A", "B") if embeddings_b is None else ("B", "A")
        raise ConfigError(f"embeddings of dataset {have} were given but not of dataset {missing}: pass --embeddings-{missing.lower()} "
                          "too (both must come from one model), or --run to embed both")
    for side, paths, emb in (("a", paths_a, embeddings_a), ("b", paths_b, embeddings_b)):
        if paths is not None and emb is None:
            raise ConfigError(f"--paths-{side} lists the images of an --embeddings-{side} .npy; it does not apply without --embeddings-{side}")
    if not 0.0 < float(cut) < 1.0:
        raise ConfigError(f"cut (the score from which two identities count as one person) must lie within (0, 1), got {cut!r}")
    if not 0.0 < float(dup_cos) <= 1.0:
        raise ConfigError(f"dup_cos (the cosine from which two images count as one) must lie within (0, 1], got {dup_cos!r}")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_apart(out: str | os.PathLike, index: DatasetIndex, data: str | os.PathLike) -> None:
    """A :class:`ConfigError` when writing (or replacing) ``out`` could touch the dataset ``data``.

    Refused: an ``out`` that holds the dataset's root (or RecordIO file), one inside an
    image folder dataset, and one inside a manifest's folder that holds images it lists.
    """
    target, root = os.path.realpath(out), os.path.realpath(index.root)
    clash = _within(root, target) or (index.kind == "folder" and _within(target, root))
    if not clash and index.kind == "manifest" and _within(target, root):
        clash = any(_within(os.path.normpath(os.path.join(root, p)), target) for p in index.paths)
    if clash:
        raise ConfigError(f"output directory {out} overlaps the dataset {data}; choose an output outside it (the inputs are never written)")


def check_sizes(emb_a: np.ndarray, emb_b: np.ndarray, where_a: Any, where_b: Any) -> None:
    """A :class:`DataError` when the two datasets' embeddings differ in size (two models cannot be compared)."""
    if emb_a.shape[1] != emb_b.shape[1]:
        raise DataError(f"embeddings of dataset A ({where_a}) are {emb_a.shape[1]}-d but those of dataset B ({where_b}) are "
                        f"{emb_b.shape[1]}-d; embed both datasets with one model")


def _open(data: str | os.PathLike, silent: bool) -> DatasetIndex:
    from cleanface.data.open import open_dataset

    index = open_dataset(os.path.abspath(data), silent=silent)  # absolute: its locations still lead to the images from elsewhere
    check_files(index, data)
    return index


# -- the run: model loading and embedding (seams the tests replace) ------------------------------
def _load_run(run_dir: Path, device: str) -> LoadedRun:
    return load_run(run_dir, device=device)


def _embed(backbone: Any, index: DatasetIndex, out_dir: Path, *, size: int, crop: int | None, device: str, silent: bool) -> None:
    embed_index(backbone, index, out_dir, size=size, crop=crop, device=device, silent=silent)


def _stamp(run_dir: Path) -> str:
    """Which model embeddings came from: a hash of the run's weights (or of the ``model.pt`` given as the run)."""
    return file_sha256(run_dir)[:16] if run_dir.is_file() else model_stamp(run_dir)


def _stage_embeddings(stage: Path, run_dir: Path, loaded: LoadedRun, indexes: dict[str, DatasetIndex], device: str,
                      silent: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embeddings of both datasets with the run's backbone, cached in ``stage/embeddings/<side>``; and per side whether computed or cached."""
    config = dict(getattr(loaded, "config", {}) or {})
    out, how = {}, {}
    for side, index in indexes.items():
        folder = stage / EMBED_DIR / side
        source = {"fingerprint": index.fingerprint(), "model": _stamp(run_dir), "size": config.get("input_size"), "crop": config.get("crop")}
        emb = cached_in(folder, index, source)
        how[side] = "cached"
        if emb is None:
            remove_path(folder)
            _embed(loaded.backbone, index, folder, size=int(config.get("input_size", 112)), crop=config.get("crop"), device=device, silent=silent)
            atomic_write_json(folder / SOURCE_FILE, source)
            emb, how[side] = read_embeddings_file(folder, index), "computed"
        out[side] = emb
    return out, how


# -- the runner ------------------------------------------------------------------------------------------
def overlap(
    data_a: str | os.PathLike,
    data_b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    run: str | os.PathLike | None = None,
    embeddings_a: str | os.PathLike | None = None,
    embeddings_b: str | os.PathLike | None = None,
    paths_a: str | os.PathLike | None = None,
    paths_b: str | os.PathLike | None = None,
    cut: float = 0.5,
    dup_cos: float = 0.98,
    device: str = "cpu",
    overwrite: bool = False,
    silent: bool = False,
) -> Path:
    """Find the identities and images of ``data_a`` that are also in ``data_b``; write them to ``out``.

    Parameters
    ----------
    data_a, data_b : path-like
        The two datasets, in any format :func:`cleanface.data.open.open_dataset` reads. Neither is written.
    out : path-like
        The output directory (module docstring); a non-empty one is refused unless ``overwrite``.
    run : path-like, optional
        A training run whose backbone embeds both datasets (its ``input_size`` and ``crop``).
    embeddings_a, embeddings_b : path-like, optional
        Embeddings of each dataset by one model, in any layout of
        :func:`cleanface.inference.stored.read_embeddings`; ``paths_a``, ``paths_b``: the
        path lists of ``.npy`` arrays from another tool. Exactly one of ``run`` and both
        embeddings is given.
    cut : float
        Identities whose score (the probability that they are one person) reaches this are shared.
    dup_cos : float
        Images with at least this cosine are one image.
    device : str
        Device for embedding with ``run``.
    overwrite, silent : bool

    Returns
    -------
    Path
        ``out``.
    """
    started = time.time()
    check_options(run, embeddings_a, embeddings_b, paths_a, paths_b, cut, dup_cos)
    out = Path(out)
    with RunLock.beside(out):  # a second overlap into the same output is refused while this one runs
        check_output_dir(out, overwrite=overwrite)
        indexes = {"a": _open(data_a, silent), "b": _open(data_b, silent)}
        for data, index in zip((data_a, data_b), indexes.values()):
            check_output_apart(out, index, data)
        given = None
        if run is None:
            given = {"a": read_embeddings(embeddings_a, indexes["a"], paths=paths_a), "b": read_embeddings(embeddings_b, indexes["b"], paths=paths_b)}
            check_sizes(given["a"], given["b"], embeddings_a, embeddings_b)
        loaded = _load_run(Path(run), device) if run is not None else None
        inputs = _info(data_a=data_a, data_b=data_b, run=run, embeddings_a=embeddings_a, embeddings_b=embeddings_b, paths_a=paths_a,
                       paths_b=paths_b)
        inputs["device"] = device
        with staging_dir(out, overwrite=overwrite) as stage:
            for entry in sorted(os.listdir(stage)):  # leftovers of an interrupted attempt, except the embedding cache
                if entry != EMBED_DIR or given is not None:
                    remove_path(stage / entry)
            if given is None:
                given, how = _stage_embeddings(stage, Path(run), loaded, indexes, device, silent)
                check_sizes(given["a"], given["b"], "computed", "computed")
                inputs["embedded"] = how
            found = find_overlap(given["a"], indexes["a"].labels, indexes["a"].num_identities, given["b"], indexes["b"].labels,
                                 indexes["b"].num_identities, cut=cut, dup_cos=dup_cos, silent=silent)
            _write(stage, indexes, found, inputs, cut=cut, dup_cos=dup_cos, started=started)
    return out


def _info(**paths: str | os.PathLike | None) -> dict[str, Any]:
    """The ``inputs`` of ``summary.json``: every given path made absolute (the report opens the datasets by them); paths lists only when given."""
    return {k: None if v is None else os.path.abspath(v) for k, v in paths.items() if v is not None or not k.startswith("paths_")}


# -- the files --------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:.6f}" if np.isfinite(value) else ""


def identity_rows(index_a: DatasetIndex, index_b: DatasetIndex, found: Overlap) -> list[list[str]]:
    """The rows of ``identities.csv`` (without the header): one per identity of A, highest score first, rows without a score last.

    Ties go to the higher similarity, then to A's label order.
    """
    score = np.asarray(found.score, dtype=np.float64)
    q = np.asarray(found.similarity, dtype=np.float64)
    order = np.lexsort((np.arange(len(score)), -np.where(np.isfinite(q), q, -np.inf), -np.where(np.isfinite(score), score, -np.inf)))
    counts_a, counts_b = index_a.counts(), index_b.counts()
    rows = []
    for c in order.tolist():
        b = int(found.nearest[c])
        rows.append([index_a.names[c], str(int(counts_a[c])), index_b.names[b] if b >= 0 else "", str(int(counts_b[b])) if b >= 0 else "",
                     _number(q[c]), _number(score[c]), "true" if found.shared[c] else "false"])
    return rows


def image_rows(index_a: DatasetIndex, index_b: DatasetIndex, found: Overlap) -> list[list[str]]:
    """The rows of ``images.csv`` (without the header): one per pair of images with cosine at least ``dup_cos``."""
    return [[str(a), index_a.location(a), index_a.identity_of(a), str(b), index_b.location(b), index_b.identity_of(b), _number(float(cos))]
            for (a, b), cos in zip(found.image_pairs.tolist(), found.image_cos.tolist())]


def write_csv(path: Path, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    """Write a UTF-8 CSV (``\\n`` line ends; bytes of names that are not UTF-8 kept as they are) atomically."""
    with atomic_write(path, "wb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        text.flush()
        text.detach()


def build_summary(indexes: dict[str, DatasetIndex], found: Overlap, inputs: dict[str, Any], *, cut: float, dup_cos: float,
                  elapsed: float) -> dict[str, Any]:
    """The content of ``summary.json`` (module docstring)."""
    a, b = indexes["a"], indexes["b"]
    counts = {"images_a": len(a), "images_b": len(b), "identities_a": a.num_identities, "identities_b": b.num_identities,
              "shared_identities": int(np.count_nonzero(found.shared)), "image_pairs": int(len(found.image_pairs)),
              "images_a_in_b": int(len(np.unique(found.image_pairs[:, 0]))) if len(found.image_pairs) else 0}
    return {"inputs": inputs, "settings": {"cut": float(cut), "dup_cos": float(dup_cos)}, "counts": counts,
            "calibration": found.calibration, "elapsed_s": round(elapsed, 3)}


def _write(stage: Path, indexes: dict[str, DatasetIndex], found: Overlap, inputs: dict[str, Any], *, cut: float, dup_cos: float,
           started: float) -> None:
    """Write ``identities.csv``, ``images.csv`` and ``summary.json`` into ``stage``, then ``COMPLETE``."""
    a, b = indexes["a"], indexes["b"]
    write_csv(stage / "identities.csv", IDENTITY_COLUMNS, identity_rows(a, b, found))
    write_csv(stage / "images.csv", IMAGE_COLUMNS, image_rows(a, b, found))
    summary = build_summary(indexes, found, inputs, cut=cut, dup_cos=dup_cos, elapsed=time.time() - started)
    atomic_write_json(stage / "summary.json", summary)
    mark_complete(stage, {"shared_identities": summary["counts"]["shared_identities"], "image_pairs": summary["counts"]["image_pairs"]})
