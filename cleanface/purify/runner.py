"""The purify runner: from a trained sub-center run (or embeddings alone) and its dataset to a cleaned dataset.

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

:func:`purify_from_embeddings` needs no training run: it reads embeddings of the dataset
from any tool (:func:`cleanface.inference.stored.read_embeddings`: ``cleanface embed``'s
own, an ``.npy`` with a paths list, a CSV or Parquet table keyed by path), estimates K
sub-centers per identity from them by spherical k-means (:mod:`cleanface.purify.kmeans`,
seeded with ``settings.seed``) and then decides and writes exactly as :func:`purify`
does. ``summary.json`` and ``run_info.json`` record where the sub-centers came from
(``"subcenters": {"source": "run"}``, or ``{"source": "kmeans", "k", "seed",
"iterations", "converged"}``); without a run there is no training history to check.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cleanface._atomic import RunLock, atomic_write_json, check_output_dir, mark_complete, remove_path, staging_dir, staging_path
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError, SanityError
from cleanface.inference.embed import embed_index
from cleanface.inference.run import LoadedRun, accuracy_per_epoch, load_run, model_stamp, read_run_names, run_centers
from cleanface.inference.stored import read_embeddings, read_embeddings_file
from cleanface.purify.decisions import Decisions, decide
from cleanface.purify.kmeans import spherical_kmeans
from cleanface.purify.outputs import (
    analysis_arrays,
    build_summary,
    write_decisions_csv,
    write_decisions_parquet,
    write_npz,
    write_summary,
)
from cleanface.purify.sanity import check_decisions, check_embeddings, check_training
from cleanface.purify.reference import reference_weights
from cleanface.purify.settings import PurifySettings

FORMATS = ("folder", "manifest", "rec")
DATASET_ENTRIES = {"folder": ("data",), "manifest": ("manifest.csv", "images"), "rec": ("train.rec", "train.idx", "identities.txt")}
EMBED_DIR = "embeddings"
SOURCE_FILE = "source.json"
DEFAULT_K = 3  # sub-centers per identity estimated without a run (sub-center ArcFace's K)


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
    return cached_in(stage / EMBED_DIR, index, source)


def cached_in(folder: Path, index: DatasetIndex, source: dict) -> np.ndarray | None:
    """The embeddings of ``index`` in ``folder`` when its ``SOURCE_FILE`` records ``source`` (same data and model), or None."""
    try:
        if json.loads((folder / SOURCE_FILE).read_text()) != source:
            return None
        return read_embeddings_file(folder, index)
    except (OSError, ValueError, DataError):
        return None


# -- the runner ------------------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """What purify checked before any work: the dataset (in the run's label order), the run, its sub-centers.

    Without a run ``loaded`` and ``centers`` are None and ``k`` sub-centers per identity
    are estimated from ``given`` by k-means.
    """

    opened: DatasetIndex
    index: DatasetIndex
    loaded: LoadedRun | None
    centers: np.ndarray | None
    truth: dict | None
    given: np.ndarray | None
    k: int = 0
    weights: np.ndarray | None = None  # centre weights from a reference (an earlier round), or None


def _open_checked(data: str | os.PathLike, truth: str | os.PathLike | None, silent: bool, *, run_names: list[str] | None = None,
                  run_dir: Path | None = None) -> tuple[DatasetIndex, DatasetIndex, dict | None]:
    """The dataset as opened, in the run's label order (when there is a run) with its files checked, and the truth rows."""
    from cleanface.data.open import open_dataset

    opened = open_dataset(data, silent=silent)
    index = opened if run_names is None else match_run(opened, run_names, run_dir or Path("."), data)
    check_files(index, data)
    truth_rows = None
    if truth is not None:
        from cleanface.data.noise import align_truth, read_truth

        truth_rows = align_truth(read_truth(truth), index)
    return opened, index, truth_rows


def _read_inputs(run_dir: Path, data: str | os.PathLike, embeddings: str | os.PathLike | None, paths: str | os.PathLike | None,
                 truth: str | os.PathLike | None, device: str, silent: bool) -> _Inputs:
    """Open and cross-check the run, the dataset, the truth file and given embeddings; one clear error on the first misfit."""
    run_names = read_run_names(run_dir)
    opened, index, truth_rows = _open_checked(data, truth, silent, run_names=run_names, run_dir=run_dir)
    given = read_embeddings(embeddings, opened, paths=paths) if embeddings is not None else None
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
    run_dir: str | os.PathLike | None,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: PurifySettings | None = None,
    fmt: str = "folder",
    embeddings: str | os.PathLike | None = None,
    paths: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    copy: bool = False,
    device: str = "cpu",
    silent: bool = False,
    reference: str | os.PathLike | None = None,
    runner: Any = None,
) -> Path:
    """Purify the dataset ``data`` with the sub-centers of the run ``run_dir``; write the result to ``out``.

    ``run_dir`` is a training run directory, ``data`` the dataset it was trained on (any
    format :func:`open_dataset` reads), ``out`` the output directory (a non-empty one is
    refused unless ``overwrite``), ``fmt`` the format of the cleaned dataset (one of
    :data:`FORMATS`). ``embeddings``: embeddings of this dataset (skips embedding), in any
    layout :func:`cleanface.inference.stored.read_embeddings` reads, ``paths`` the path list
    of an ``.npy`` from another tool. ``truth``: a ``noise_truth.csv`` that adds precision, recall and
    F1 of the flags to the summary. ``copy``: copy image files instead of hard-linking.
    ``run_dir=None`` is :func:`purify_from_embeddings` with its default K (``embeddings`` required).
    ``reference``: an earlier purify output of ``data`` whose kept images alone form the
    identity means of the calibrated drop rule (:mod:`cleanface.purify.reference`; a second round).
    ``runner``: where the passes over the embeddings run (:mod:`cleanface.purify.shards`; threads
    of this process by default, or a Dask cluster: the same decisions).

    :mod:`cleanface.purify.sanity` refuses a model that did not learn, as early as the
    evidence allows (the training history before embedding, the embeddings before
    deciding, the merges before writing), and nothing is left behind
    (``settings.sanity_check`` turns it off). No report is
    rendered: callers use :func:`cleanface.report.purify.render_purify_report`.
    Returns ``out``.
    """
    started = time.time()
    settings = settings or PurifySettings()
    if run_dir is None:
        if embeddings is None:
            raise ConfigError("purify without a training run needs embeddings of the dataset (embeddings=, --embeddings)")
        return purify_from_embeddings(data, embeddings, out, paths=paths, settings=settings, fmt=fmt, truth=truth, overwrite=overwrite,
                                      copy=copy, silent=silent, reference=reference, runner=runner)
    run_dir = Path(run_dir)
    info = _info(run_dir, data, out, embeddings, paths, truth, device, reference)

    def read() -> _Inputs:
        inputs = _read_inputs(run_dir, data, embeddings, paths, truth, device, silent)
        check_training(settings, accuracy_per_epoch(run_dir), len(inputs.index.names))
        return _with_reference(inputs, reference)

    def embed(stage: Path, inputs: _Inputs) -> tuple[np.ndarray, str]:
        return _stage_embeddings(stage, inputs, run_dir, settings, device, silent)

    return _purify_locked(out, read, embed, settings, info, fmt=fmt, overwrite=overwrite, copy=copy, silent=silent, started=started,
                          runner=runner)


def purify_from_embeddings(
    data: str | os.PathLike,
    embeddings: str | os.PathLike,
    out: str | os.PathLike,
    *,
    paths: str | os.PathLike | None = None,
    k: int = DEFAULT_K,
    settings: PurifySettings | None = None,
    fmt: str = "folder",
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    copy: bool = False,
    silent: bool = False,
    reference: str | os.PathLike | None = None,
    runner: Any = None,
) -> Path:
    """Purify ``data`` without a training run: sub-centers from spherical k-means of the given embeddings.

    ``embeddings`` of every image of ``data``, in any layout that
    :func:`cleanface.inference.stored.read_embeddings` reads (``paths``: the path list of an
    ``.npy`` from another tool); ``k`` sub-centers per identity are estimated from them by
    :func:`cleanface.purify.kmeans.spherical_kmeans` seeded with ``settings.seed``. The other
    arguments, the checks (but the training history, which does not exist here), the rules
    and the output directory are those of :func:`purify`. Returns ``out``.

    K-means splits even a clean identity among its K sub-centers, so
    ``settings.drop_non_dominant`` would drop clean images here; the angle, relabel, merge
    and split rules measure against the dominant sub-center and apply as they are.
    """
    started = time.time()
    settings = settings or PurifySettings()
    if not 1 <= int(k) <= 1024:
        raise ConfigError(f"the number of sub-centers k must lie within [1, 1024], got {k!r}")
    info = _info(None, data, out, embeddings, paths, truth, "cpu", reference)

    def read() -> _Inputs:
        opened, index, truth_rows = _open_checked(data, truth, silent)
        return _with_reference(_Inputs(opened, index, None, None, truth_rows, read_embeddings(embeddings, opened, paths=paths), int(k)), reference)

    def given(stage: Path, inputs: _Inputs) -> tuple[np.ndarray, str]:
        remove_path(stage / EMBED_DIR)
        return inputs.given, "given"

    return _purify_locked(out, read, given, settings, info, fmt=fmt, overwrite=overwrite, copy=copy, silent=silent, started=started,
                          runner=runner)


def _with_reference(inputs: _Inputs, reference: str | os.PathLike | None) -> _Inputs:
    """``inputs`` with the centre weights of ``reference`` (an earlier purify output of the same data), when given."""
    if reference is not None:
        inputs.weights = reference_weights(reference, inputs.index)
    return inputs


def _info(run_dir: Path | None, data: str | os.PathLike, out: str | os.PathLike, embeddings: str | os.PathLike | None,
          paths: str | os.PathLike | None, truth: str | os.PathLike | None, device: str,
          reference: str | os.PathLike | None = None) -> dict[str, Any]:
    """The inputs part of ``run_info.json``."""
    info = {"run": None if run_dir is None else str(run_dir), "data": str(data), "out": str(out),
            "embeddings": None if embeddings is None else str(embeddings), "truth": None if truth is None else str(truth), "device": device,
            "reference": None if reference is None else str(reference)}
    if paths is not None:
        info["paths"] = str(paths)
    return info


def _purify_locked(out: str | os.PathLike, read: Callable[[], _Inputs], embed: Callable[[Path, _Inputs], tuple[np.ndarray, str]],
                   settings: PurifySettings, info: dict[str, Any], *, fmt: str, overwrite: bool, copy: bool, silent: bool,
                   started: float, runner: Any = None) -> Path:
    """Under the output's lock: refuse a non-empty ``out``, ``read`` the inputs, decide and write; a refused purify writes nothing."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    with RunLock.beside(out):  # a second purify into the same output is refused while this one runs
        check_output_dir(out, overwrite=overwrite)
        inputs = read()
        try:
            _decide_and_write(out, inputs, settings, embed, info, fmt=fmt, overwrite=overwrite, copy=copy, silent=silent, started=started,
                              runner=runner)
        except SanityError:
            remove_path(staging_path(out))  # a refused purify writes nothing, not even its embedding cache
            raise
    return out


def _subcenters(inputs: _Inputs, emb: np.ndarray, settings: PurifySettings, timings: dict[str, float]) -> tuple[np.ndarray, dict[str, Any]]:
    """The run's sub-centers, or k-means ones of ``emb``; and where they came from (for the summary and run_info)."""
    if inputs.centers is not None:
        return inputs.centers, {"source": "run"}
    t0 = time.perf_counter()
    fit = spherical_kmeans(emb, inputs.index.labels, len(inputs.index.names), k=inputs.k, seed=settings.seed)
    timings["kmeans"] = round(time.perf_counter() - t0, 3)
    return fit.centers, {"source": "kmeans", "k": inputs.k, "seed": settings.seed, "iterations": fit.iterations, "converged": fit.converged}


def _decide_and_write(out: Path, inputs: _Inputs, settings: PurifySettings, embed: Callable[[Path, _Inputs], tuple[np.ndarray, str]],
                      info: dict[str, Any], *, fmt: str, overwrite: bool, copy: bool, silent: bool, started: float,
                      runner: Any = None) -> None:
    """Embed (or reuse), check, decide, check again and write the output through its staging directory, ``COMPLETE`` last."""
    with staging_dir(out, overwrite=overwrite) as stage:
        for entry in sorted(os.listdir(stage)):  # leftovers of an interrupted attempt, except the embedding cache
            if entry != EMBED_DIR:
                remove_path(stage / entry)
        t0 = time.perf_counter()
        emb, embedded = embed(stage, inputs)
        if inputs.centers is not None and emb.shape[1] != inputs.centers.shape[2]:
            raise DataError(f"embeddings are {emb.shape[1]}-d but the sub-centers of run {info['run']} are {inputs.centers.shape[2]}-d")
        timings = {"embed": round(time.perf_counter() - t0, 3)}
        check_embeddings(settings, emb)
        centers, subcenters = _subcenters(inputs, emb, settings, timings)
        decisions = decide(emb, inputs.index.labels, centers, settings, names=inputs.index.names, silent=silent, centre_weights=inputs.weights,
                           labels_learned=embedded != "given" and inputs.loaded is not None, runner=runner)
        check_decisions(settings, decisions, len(inputs.index.names))
        timings.update(decisions.timings)
        t0 = time.perf_counter()
        write_outputs(stage, inputs.index, decisions, settings, fmt=fmt, copy=copy, truth=inputs.truth, silent=silent, subcenters=subcenters)
        timings["write"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(stage / "run_info.json", {
            **info, "embeddings": info["embeddings"] or embedded, "subcenters": subcenters, "started": started, "finished": time.time(),
            "runner": (runner.describe() if runner is not None else {"runner": "local"}),
            "seconds": timings, "python": platform.python_version(),
        })
        mark_complete(stage, {"images_after": int(decisions.kept.sum())})


def write_cleaned_dataset(stage: Path, index: DatasetIndex, kept: np.ndarray, labels: np.ndarray, names: list[str], *, fmt: str,
                          copy: bool = False, silent: bool = True) -> None:
    """Write the samples ``kept`` of ``index`` with output labels ``labels`` (into ``names``) as a ``fmt`` dataset in ``stage``.

    Labels are renumbered consecutively (identities without an image disappear); the
    dataset's entries (:data:`DATASET_ENTRIES`) land directly in ``stage``.
    """
    from cleanface.data.open import write_dataset

    cleaned = index.subset(kept, renumber=False).with_labels(labels, names)
    cleaned = cleaned.subset(np.arange(len(cleaned)), renumber=True)
    if fmt == "folder":
        write_dataset(cleaned, stage / "data", "folder", copy=copy, overwrite=True, silent=silent)
        return
    tmp = stage / ".dataset"
    write_dataset(cleaned, tmp, fmt, copy=copy, overwrite=True, silent=silent)
    for entry in DATASET_ENTRIES[fmt]:
        if (tmp / entry).exists():
            os.replace(tmp / entry, stage / entry)
    remove_path(tmp)


def write_outputs(
    stage: Path, index: DatasetIndex, decisions: Decisions, settings: PurifySettings, *, fmt: str, copy: bool = False,
    truth: dict | None = None, silent: bool = True, subcenters: dict | None = None,
) -> None:
    """Write the cleaned dataset, ``decisions.csv``/``.parquet``, ``summary.json`` and ``analysis.npz`` into ``stage``.

    ``subcenters``: where the sub-centers came from, added to the summary as ``"subcenters"``.
    """
    kept = np.flatnonzero(decisions.kept)
    if len(kept) == 0:
        raise DataError(f"purification of {index.root} keeps no image (threshold {settings.threshold} deg); raise the threshold")
    write_cleaned_dataset(stage, index, kept, decisions.new_label[kept], decisions.names, fmt=fmt, copy=copy, silent=silent)
    write_decisions_csv(stage / "decisions.csv", index, decisions)
    write_decisions_parquet(stage / "decisions.parquet", index, decisions)
    summary = build_summary(index, decisions, settings, fmt=fmt, truth=truth)
    if subcenters is not None:
        summary["subcenters"] = subcenters
    write_summary(stage / "summary.json", summary)
    write_npz(stage / "analysis.npz", analysis_arrays(decisions))

