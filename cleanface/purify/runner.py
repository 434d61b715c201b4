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

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._atomic import RunLock, atomic_write_json, check_output_dir, mark_complete, remove_path, staging_dir, staging_path
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError, SanityError
from cleanface.inference.embed import embed_index
from cleanface.inference.run import LoadedRun, accuracy_per_epoch, load_run, model_stamp, read_run_names, run_centers
from cleanface.inference.stored import read_embeddings_file
from cleanface.purify.decisions import Decisions, decide
from cleanface.purify.outputs import (
    analysis_arrays,
    build_summary,
    write_decisions_csv,
    write_decisions_parquet,
    write_npz,
    write_summary,
)
from cleanface.purify.sanity import check_decisions, check_embeddings, check_training
from cleanface.purify.settings import PurifySettings

FORMATS = ("folder", "manifest", "rec")
DATASET_ENTRIES = {"folder": ("data",), "manifest": ("manifest.csv", "images"), "rec": ("train.rec", "train.idx", "identities.txt")}
EMBED_DIR = "embeddings"
SOURCE_FILE = "source.json"


# -- checks done before any work ------------------------------------------------------------------
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


# -- the run: model loading and embedding (seams the tests replace) ------------------------------
def _load_run(run_dir: Path, device: str) -> LoadedRun:
    return load_run(run_dir, device=device)


def _embed(backbone: Any, index: DatasetIndex, out_dir: Path, *, size: int, crop: int | None, flip: bool, device: str, silent: bool) -> None:
    embed_index(backbone, index, out_dir, size=size, crop=crop, flip=flip, device=device, silent=silent)


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
@dataclass
class _Inputs:
    """What purify checked before any work: the dataset (in the run's label order), the run, its sub-centers."""

    opened: DatasetIndex
    index: DatasetIndex
    loaded: LoadedRun
    centers: np.ndarray
    truth: dict | None
    given: np.ndarray | None


def _read_inputs(run_dir: Path, data: str | os.PathLike, embeddings: str | os.PathLike | None, truth: str | os.PathLike | None,
                 device: str, silent: bool) -> _Inputs:
    """Open and cross-check the run, the dataset, the truth file and given embeddings; one clear error on the first misfit."""
    from cleanface.data.open import open_dataset

    run_names = read_run_names(run_dir)
    opened = open_dataset(data, silent=silent)
    index = match_run(opened, run_names, run_dir, data)
    check_files(index, data)
    truth_rows = None
    if truth is not None:
        from cleanface.data.noise import align_truth, read_truth

        truth_rows = align_truth(read_truth(truth), index)
    given = read_embeddings_file(embeddings, opened) if embeddings is not None else None
    loaded = _load_run(run_dir, device)
    return _Inputs(opened, index, loaded, run_centers(loaded, len(run_names), run_dir), truth_rows, given)


def _stage_embeddings(stage: Path, inputs: _Inputs, run_dir: Path, settings: PurifySettings, device: str, silent: bool) -> tuple[np.ndarray, str]:
    """The embeddings to decide on: given, cached by an interrupted attempt, or computed now; and which of the three."""
    if inputs.given is not None:
        remove_path(stage / EMBED_DIR)
        return inputs.given, "given"
    config = dict(getattr(inputs.loaded, "config", {}) or {})
    source = {"fingerprint": inputs.opened.fingerprint(), "model": model_stamp(run_dir), "flip": settings.flip,
              "size": config.get("input_size"), "crop": config.get("crop")}
    emb = cached_embeddings(stage, inputs.opened, source)
    if emb is not None:
        return emb, "cached"
    remove_path(stage / EMBED_DIR)
    _embed(inputs.loaded.backbone, inputs.opened, stage / EMBED_DIR, size=int(config.get("input_size", 112)), crop=config.get("crop"),
           flip=settings.flip, device=device, silent=silent)
    atomic_write_json(stage / EMBED_DIR / SOURCE_FILE, source)
    return read_embeddings_file(stage / EMBED_DIR, inputs.opened), "computed"


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
) -> Path:
    """Purify the dataset ``data`` with the sub-centers of the run ``run_dir``; write the result to ``out``.

    ``run_dir`` is a training run directory, ``data`` the dataset it was trained on (any
    format :func:`open_dataset` reads), ``out`` the output directory (a non-empty one is
    refused unless ``overwrite``), ``fmt`` the format of the cleaned dataset (one of
    :data:`FORMATS`). ``embeddings``: embeddings of this dataset from ``embed_index``
    (skips embedding). ``truth``: a ``noise_truth.csv`` that adds precision, recall and
    F1 of the flags to the summary. ``copy``: copy image files instead of hard-linking.

    :mod:`cleanface.purify.sanity` refuses a model that did not learn, as early as the
    evidence allows (the training history before embedding, the embeddings before
    deciding, the merges before writing), and nothing is left behind
    (``settings.sanity_check`` turns it off). No report is
    rendered: callers use :func:`cleanface.report.purify.render_purify_report`.
    Returns ``out``.
    """
    started = time.time()
    settings = settings or PurifySettings()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    with RunLock.beside(out):  # a second purify into the same output is refused while this one runs
        check_output_dir(out, overwrite=overwrite)
        inputs = _read_inputs(run_dir, data, embeddings, truth, device, silent)
        check_training(settings, accuracy_per_epoch(run_dir), len(inputs.index.names))
        try:
            _decide_and_write(run_dir, data, out, inputs, settings, fmt=fmt, embeddings=embeddings, truth=truth, overwrite=overwrite,
                              copy=copy, device=device, silent=silent, started=started)
        except SanityError:
            remove_path(staging_path(out))  # a refused purify writes nothing, not even its embedding cache
            raise
    return out


def _decide_and_write(run_dir: Path, data: str | os.PathLike, out: Path, inputs: _Inputs, settings: PurifySettings, *, fmt: str,
                      embeddings: str | os.PathLike | None, truth: str | os.PathLike | None, overwrite: bool, copy: bool, device: str,
                      silent: bool, started: float) -> None:
    """Embed (or reuse), check, decide, check again and write the output through its staging directory, ``COMPLETE`` last."""
    with staging_dir(out, overwrite=overwrite) as stage:
        for entry in sorted(os.listdir(stage)):  # leftovers of an interrupted attempt, except the embedding cache
            if entry != EMBED_DIR:
                remove_path(stage / entry)
        t0 = time.perf_counter()
        emb, embedded = _stage_embeddings(stage, inputs, run_dir, settings, device, silent)
        if emb.shape[1] != inputs.centers.shape[2]:
            raise DataError(f"embeddings are {emb.shape[1]}-d but the sub-centers of run {run_dir} are {inputs.centers.shape[2]}-d")
        timings = {"embed": round(time.perf_counter() - t0, 3)}
        check_embeddings(settings, emb)
        decisions = decide(emb, inputs.index.labels, inputs.centers, settings, names=inputs.index.names, silent=silent)
        check_decisions(settings, decisions, len(inputs.index.names))
        timings.update(decisions.timings)
        t0 = time.perf_counter()
        write_outputs(stage, inputs.index, decisions, settings, fmt=fmt, copy=copy, truth=inputs.truth, silent=silent)
        timings["write"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(stage / "run_info.json", {
            "run": str(run_dir), "data": str(data), "out": str(out), "embeddings": embedded if embeddings is None else str(embeddings),
            "truth": None if truth is None else str(truth), "device": device, "started": started, "finished": time.time(),
            "seconds": timings, "python": platform.python_version(),
        })
        mark_complete(stage, {"images_after": int(decisions.kept.sum())})


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
        remove_path(tmp)
    write_decisions_csv(stage / "decisions.csv", index, decisions)
    write_decisions_parquet(stage / "decisions.parquet", index, decisions)
    write_summary(stage / "summary.json", build_summary(index, decisions, settings, fmt=fmt, truth=truth))
    write_npz(stage / "analysis.npz", analysis_arrays(decisions))

