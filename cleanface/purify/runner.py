"""The purify runner: from a trained sub-center run and its dataset to a cleaned dataset.

:func:`purify` checks, before any work, that the run and the dataset belong together
(same identities, no missing files, a matching embeddings file and truth file when
given); then it embeds every image (or reads the given embeddings), applies
:func:`cleanface.purify.decisions.decide`, and writes the output directory through a
staging directory, ``COMPLETE`` last. A lock beside the output (``.<name>.lock``) refuses a
second purify into the same directory while one runs:

``data/`` | ``manifest.csv`` + ``images/`` | ``train.rec`` + ``train.idx`` + ``identities.txt``
    the cleaned dataset (labels renumbered consecutively; empty identities disappear);
``decisions.csv`` (and ``decisions.parquet`` with pyarrow), ``summary.json``, ``analysis.npz``
    see :mod:`cleanface.purify.outputs`;
``embeddings/``
    the embeddings computed here (absent with ``embeddings=``); kept in the staging
    directory, so an interrupted purify resumes without embedding again;
``run_info.json``
    paths, times and stage timings: the only file that differs between two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._atomic import RunLock, atomic_write_json, check_output_dir, mark_complete, staging_dir
from cleanface.data.index import DatasetIndex
from cleanface.errors import CheckpointError, ConfigError, DataError
from cleanface.purify.decisions import Decisions, decide
from cleanface.purify.outputs import (
    analysis_arrays,
    build_summary,
    write_decisions_csv,
    write_decisions_parquet,
    write_npz,
    write_summary,
)
from cleanface.purify.settings import PurifySettings

FORMATS = ("folder", "manifest", "rec")
DATASET_ENTRIES = {"folder": ("data",), "manifest": ("manifest.csv", "images"), "rec": ("train.rec", "train.idx", "identities.txt")}
EMBED_DIR = "embeddings"
SOURCE_FILE = "source.json"


# -- checks done before any work ------------------------------------------------------------------
def read_run_names(run_dir: str | os.PathLike) -> list[str]:
    """Identity names of a run (``identities.txt``, label order)."""
    path = Path(run_dir) / "identities.txt"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; is {run_dir} a training run directory?") from None
    return [line for line in text.split("\n") if line != ""]


def match_run(index: DatasetIndex, run_names: list[str], run_dir: str | os.PathLike, data: str | os.PathLike) -> DatasetIndex:
    """``index`` with labels in the run's identity order; a :class:`DataError` when the identities differ.

    Same names in another order are renumbered; anything else fails with one line that
    gives both counts and examples of the difference.
    """
    if list(index.names) == list(run_names):
        return index
    ours, theirs = set(index.names), set(run_names)
    if ours == theirs and len(run_names) == len(index.names):
        lookup = {name: i for i, name in enumerate(run_names)}
        remap = np.array([lookup[n] for n in index.names], dtype=np.int64)
        return index.with_labels(remap[index.labels], list(run_names))
    only_data = sorted(ours - theirs)[:3]
    only_run = sorted(theirs - ours)[:3]
    detail = "; ".join(x for x in (
        f"only in the dataset: {', '.join(map(repr, only_data))}" if only_data else "",
        f"only in the run: {', '.join(map(repr, only_run))}" if only_run else "",
    ) if x)
    raise DataError(
        f"run {run_dir} was trained on {len(run_names)} identities but dataset {data} has {index.num_identities} ({detail or 'duplicate names'}); "
        "purify the dataset the run was trained on"
    )


def check_files(index: DatasetIndex, data: str | os.PathLike) -> None:
    """A :class:`DataError` naming the first missing image file (or RecordIO file) of ``index``."""
    if index.kind == "rec":
        if not os.path.isfile(index.root):
            raise DataError(f"RecordIO file {index.root} of dataset {data} is missing")
        return
    root = index.root
    missing = [i for i, p in enumerate(index.paths) if not os.path.isfile(os.path.join(root, p))]
    if missing:
        raise DataError(f"{len(missing)} of {len(index)} images of dataset {data} are missing (first: {index.location(missing[0])}); re-index or restore the dataset")


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


# -- the run: model loading and embedding (late imports: torch only when needed) --------------------
def _load_run(run_dir: Path, device: str) -> Any:
    try:
        from cleanface.training.run import load_run
    except ImportError as exc:
        raise CheckpointError(f"cannot load the run {run_dir}: cleanface.training.run is unavailable ({exc})") from None
    return load_run(run_dir, device=device)


def _embed(backbone: Any, index: DatasetIndex, out_dir: Path, *, size: int, crop: int | None, flip: bool, device: str, silent: bool) -> None:
    from cleanface.training.embed import embed_index

    embed_index(backbone, index, out_dir, size=size, crop=crop, flip=flip, device=device, silent=silent)


def run_centers(loaded: Any, num_classes: int, run_dir: Path) -> np.ndarray:
    """Sub-centers (C, K, D) float32 of a loaded run's head, checked against the run's identity count."""
    centers = loaded.head.class_centers()
    if hasattr(centers, "detach"):
        centers = centers.detach().cpu().float().numpy()
    centers = np.asarray(centers, dtype=np.float32)
    if centers.ndim != 3 or len(centers) != num_classes:
        raise CheckpointError(f"the head of run {run_dir} has sub-centers of shape {centers.shape}, expected ({num_classes}, K, D)")
    return centers


def _model_stamp(run_dir: Path) -> str:
    """A hash of the run's final weights (or last checkpoint): which model the cached embeddings came from."""
    for name in ("model.pt", os.path.join("checkpoints", "last.pt")):
        path = run_dir / name
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()[:16]
    return ""


def cached_embeddings(stage: Path, index: DatasetIndex, source: dict) -> np.ndarray | None:
    """Embeddings cached in ``stage/embeddings`` by an earlier, interrupted purify of the same inputs, or None."""
    folder = stage / EMBED_DIR
    try:
        if json.loads((folder / SOURCE_FILE).read_text()) != source:
            return None
        return read_embeddings_file(folder, index)
    except (OSError, ValueError, DataError):
        return None


# -- the runner ------------------------------------------------------------------------------------------
def purify(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: PurifySettings | None = None,
    fmt: str = "folder",
    embeddings: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    copy: bool = False,
    device: str = "cpu",
    silent: bool = False,
    report: bool = True,
) -> Path:
    """Purify the dataset ``data`` with the sub-centers of the run ``run_dir``; write the result to ``out``.

    Parameters
    ----------
    run_dir : path-like
        A training run directory (``identities.txt``, ``model.pt``, ``config.json``).
    data : path-like
        The dataset the run was trained on (any format :func:`open_dataset` reads).
    out : path-like
        Output directory; a non-empty one is refused unless ``overwrite``.
    settings : PurifySettings, optional
    fmt : {"folder", "manifest", "rec"}
        Format of the cleaned dataset.
    embeddings : path-like, optional
        Embeddings from ``embed_index`` for this dataset (skips embedding).
    truth : path-like, optional
        ``noise_truth.csv`` (paths relative to the dataset root): adds precision, recall
        and F1 of the flags to the summary.
    copy : bool
        Copy image files instead of hard-linking them.
    device, silent : str, bool
    report : bool
        Render the inspection report into ``out/report/`` (``cleanface report`` can redo it).

    Returns
    -------
    Path
        ``out``.
    """
    started = time.time()
    settings = settings or PurifySettings()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    with RunLock.beside(out):  # a second purify into the same output is refused while this one runs
        check_output_dir(out, overwrite=overwrite)
        run_names = read_run_names(run_dir)
        from cleanface.data.open import open_dataset

        opened = open_dataset(data, silent=silent)
        index = match_run(opened, run_names, run_dir, data)
        check_files(index, data)
        truth_rows = None
        if truth is not None:
            from cleanface.data.noise import align_truth, read_truth

            truth_rows = align_truth(read_truth(truth), index)
        given = read_embeddings_file(embeddings, opened) if embeddings is not None else None

        loaded = _load_run(run_dir, device)
        centers = run_centers(loaded, len(run_names), run_dir)
        timings: dict[str, float] = {}
        with staging_dir(out, overwrite=overwrite) as stage:
            for entry in sorted(os.listdir(stage)):  # leftovers of an interrupted attempt, except the embedding cache
                if entry != EMBED_DIR:
                    _remove(stage / entry)
            t0 = time.perf_counter()
            if given is not None:
                emb, embedded = given, "given"
                _remove(stage / EMBED_DIR)
            else:
                config = dict(getattr(loaded, "config", {}) or {})
                source = {"fingerprint": opened.fingerprint(), "model": _model_stamp(run_dir), "flip": settings.flip,
                          "size": config.get("input_size"), "crop": config.get("crop")}
                emb = cached_embeddings(stage, opened, source)
                embedded = "cached"
                if emb is None:
                    _remove(stage / EMBED_DIR)
                    _embed(loaded.backbone, opened, stage / EMBED_DIR, size=int(config.get("input_size", 112)), crop=config.get("crop"),
                           flip=settings.flip, device=device, silent=silent)
                    atomic_write_json(stage / EMBED_DIR / SOURCE_FILE, source)
                    emb = read_embeddings_file(stage / EMBED_DIR, opened)
                    embedded = "computed"
            if emb.shape[1] != centers.shape[2]:
                raise DataError(f"embeddings are {emb.shape[1]}-d but the sub-centers of run {run_dir} are {centers.shape[2]}-d")
            timings["embed"] = round(time.perf_counter() - t0, 3)

            decisions = decide(emb, index.labels, centers, settings, names=index.names, silent=silent)
            timings.update(decisions.timings)
            t0 = time.perf_counter()
            write_outputs(stage, index, decisions, settings, fmt=fmt, copy=copy, truth=truth_rows, silent=silent)
            timings["write"] = round(time.perf_counter() - t0, 3)
            atomic_write_json(stage / "run_info.json", {
                "run": str(run_dir), "data": str(data), "out": str(out), "embeddings": embedded if embeddings is None else str(embeddings),
                "truth": None if truth is None else str(truth), "device": device, "started": started, "finished": time.time(),
                "seconds": timings, "python": platform.python_version(),
            })
            if report:
                from cleanface.report.purify import render_purify_report

                render_purify_report(stage, data=opened, silent=silent)
            mark_complete(stage, {"images_after": int(decisions.kept.sum())})
    return out


def write_outputs(
    stage: Path, index: DatasetIndex, decisions: Decisions, settings: PurifySettings, *, fmt: str, copy: bool = False,
    truth: dict | None = None, silent: bool = True,
) -> None:
    """Write the cleaned dataset, ``decisions.csv``/``.parquet``, ``summary.json`` and ``analysis.npz`` into ``stage``."""
    from cleanface.data.open import write_dataset

    kept = np.flatnonzero(decisions.kept)
    if len(kept) == 0:
        raise DataError(f"purification of {index.root} keeps no image (threshold {settings.threshold} deg); raise the threshold")
    cleaned = index.subset(kept, renumber=False).with_labels(decisions.new_label[kept], decisions.names)
    cleaned = cleaned.subset(np.arange(len(cleaned)), renumber=True)
    if fmt == "folder":
        write_dataset(cleaned, stage / "data", "folder", copy=copy, overwrite=True, silent=silent)
    else:
        tmp = stage / ".dataset"
        write_dataset(cleaned, tmp, fmt, copy=copy, overwrite=True, silent=silent)
        for entry in DATASET_ENTRIES[fmt]:
            if (tmp / entry).exists():
                os.replace(tmp / entry, stage / entry)
        _remove(tmp)
    write_decisions_csv(stage / "decisions.csv", index, decisions)
    write_decisions_parquet(stage / "decisions.parquet", index, decisions)
    write_summary(stage / "summary.json", build_summary(index, decisions, settings, fmt=fmt, truth=truth))
    write_npz(stage / "analysis.npz", analysis_arrays(decisions))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
