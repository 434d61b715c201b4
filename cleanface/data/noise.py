"""Label noise injected into a clean dataset, with the ground truth written beside it.

:func:`inject_noise` writes a noisy copy of a dataset as an image folder (images
hard-linked, else symlinked, else copied; the source is never modified) and
``noise_truth.csv`` with one row per output image:

========================  =============================================================
``path``                  ``<assigned folder>/<file>``, relative to the output folder
``true_identity``         who the image shows; ``outside`` for open-set faces
``assigned_identity``     the label the noisy dataset gives it
``noise_type``            ``clean``, ``close-set``, ``open-set``, ``merged`` or ``split``
``source``                the image's original location
========================  =============================================================

Kinds of noise:

* close-set: a set image labelled as another identity of the set;
* open-set: an image of someone outside the set (from ``outside``) given a set identity;
  these images are added to the source images;
* merged: two identities under one label (the absorbed identity's images are
  ``merged``, the keeping identity's stay ``clean``);
* split: half the images of an identity moved to a new identity ``<name>__split``
  (the moved half is ``split``).

Rates are fractions of the output images: with ``N`` source images and open-set rate
``o``, ``round(o * N / (1 - o))`` outside images are added, and the close-set count is
``round(close_set * output images)``. Everything is a function of ``seed``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._atomic import atomic_write_json, atomic_write_text, staging_dir
from cleanface.data._paths import check_not_source
from cleanface.data.folder import place_image
from cleanface.data.index import DatasetIndex
from cleanface.errors import ConfigError, DataError
from cleanface.progress import make_progress

NOISE_TYPES = ("clean", "close-set", "open-set", "merged", "split")
TRUTH_FILE = "noise_truth.csv"
TRUTH_COLUMNS = ("path", "true_identity", "assigned_identity", "noise_type", "source")
OUTSIDE = "outside"
SPLIT_SUFFIX = "__split"


@dataclass
class NoiseResult:
    """What :func:`inject_noise` wrote.

    Attributes
    ----------
    out : Path
        The noisy image folder.
    truth : Path
        ``out/noise_truth.csv``.
    images, identities : int
        Size of the noisy dataset.
    counts : dict
        Images per noise type (all of :data:`NOISE_TYPES`).
    merges : list of (kept, absorbed) identity names
    splits : list of (identity, new identity) names
    """

    out: Path
    truth: Path
    images: int
    identities: int
    counts: dict[str, int]
    merges: list[tuple[str, str]] = field(default_factory=list)
    splits: list[tuple[str, str]] = field(default_factory=list)

    @property
    def noise_rate(self) -> float:
        """Fraction of output images whose label is wrong (every type but ``clean``)."""
        return 1.0 - self.counts["clean"] / max(self.images, 1)


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {value}")
    return value


def _safe_folders(names: list[str]) -> dict[str, str]:
    from cleanface.data.folder import safe_name

    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = folder = safe_name(name)
        k = 2
        while folder in taken:
            folder = f"{base}~{k}"
            k += 1
        taken.add(folder)
        out[name] = folder
    return out


def _place(index: DatasetIndex, i: int, dst: Path, copy: bool) -> bool:
    """Put sample ``i`` of ``index`` at ``dst`` (an image file is checked first, as every writer does); True when a symlink was made."""
    if index.kind == "rec":
        dst.write_bytes(index.read_bytes(i))
        return False
    return place_image(index.abspath(i), dst, copy, dst.parent.parent) == "symlink"


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def inject_noise(
    src_index: DatasetIndex,
    dst: str | os.PathLike,
    *,
    close_set: float = 0.0,
    open_set: float = 0.0,
    outside: DatasetIndex | None = None,
    merge_identities: int = 0,
    split_identities: int = 0,
    seed: int = 0,
    copy: bool = False,
    overwrite: bool = False,
    silent: bool = True,
) -> NoiseResult:
    """Write a noisy copy of ``src_index`` as an image folder ``dst`` with ``dst/noise_truth.csv``.

    Parameters
    ----------
    src_index : DatasetIndex
        The clean dataset (any format).
    dst : path-like
        Output image folder (``<identity>/<file>``), built under a staging name.
    close_set, open_set : float
        Fractions of the output images (see the module docstring).
    outside : DatasetIndex, optional
        Faces of people not in the set; required when ``open_set > 0``.
    merge_identities : int
        Pairs of identities to merge under one label.
    split_identities : int
        Identities (with at least 2 images) to split in two.
    seed : int
    copy : bool
        Copy files instead of linking them.
    overwrite : bool
        Replace a non-empty ``dst``.
    silent : bool
        No progress bar.

    Returns
    -------
    NoiseResult
    """
    close_set, open_set = _check_settings(close_set, open_set, merge_identities, split_identities)
    dst = _check_source(src_index, dst, merge_identities, split_identities)
    # every random draw comes from this one generator, in this order: merges, splits, close-set, open-set
    rng = np.random.default_rng(seed)
    plan = _identity_noise(src_index, rng, merge_identities, split_identities)
    n_open = _open_set_count(open_set, len(src_index))
    _close_set_noise(plan, rng, close_set, len(src_index) + n_open)
    _open_set_noise(plan, rng, open_set, n_open, outside)
    folders, rows, jobs = _layout(plan, src_index, outside)
    settings = {"close_set": close_set, "open_set": open_set, "merge_identities": merge_identities, "split_identities": split_identities, "seed": seed, "copy": copy}
    with staging_dir(dst, overwrite=overwrite) as stage, make_progress(silent=silent) as progress:
        _write_images(stage, folders, jobs, copy=copy, progress=progress, what=f"writing noisy {dst.name}")
        type_counts = _write_truth(stage, rows)
        summary = {
            "source": str(src_index.root),
            "outside": None if outside is None else str(outside.root),
            "settings": settings,
            "images": len(rows),
            "identities": len(plan.out_names),
            "counts": type_counts,
            "merges": plan.merges,
            "splits": plan.splits,
        }
        atomic_write_json(stage / "noise.json", summary)
    return NoiseResult(dst, dst / TRUTH_FILE, len(rows), len(plan.out_names), type_counts, plan.merges, plan.splits)


# -- the steps of inject_noise ------------------------------------------------------------
@dataclass
class _Plan:
    """The labels of a noisy dataset as :func:`inject_noise` draws them.

    Attributes
    ----------
    names : list of str
        The source identities.
    true_names, assigned, kind : ndarray of shape (N,), object
        Per source sample: who it shows, its label in the noisy dataset, its noise type.
    merges, splits : lists of (identity, identity) names
        As in :class:`NoiseResult`.
    out_names : list of str
        The identities of the noisy dataset, sorted.
    owner : dict of str to str
        Noisy identity -> the source identity whose images it holds (a split half's is
        the identity it was split from).
    open_ids : ndarray of int64
        Outside samples added as open-set noise, sorted; ``open_assigned`` their labels.
    """

    names: list[str]
    true_names: np.ndarray
    assigned: np.ndarray
    kind: np.ndarray
    merges: list[tuple[str, str]] = field(default_factory=list)
    splits: list[tuple[str, str]] = field(default_factory=list)
    out_names: list[str] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)
    open_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    open_assigned: list[str] = field(default_factory=list)


def _check_settings(close_set: float, open_set: float, merge_identities: int, split_identities: int) -> tuple[float, float]:
    """Refuse rates outside [0, 1), rates summing to 1 or more, and negative counts; the rates as floats."""
    close_set = _check_rate("close_set", close_set)
    open_set = _check_rate("open_set", open_set)
    if close_set + open_set >= 1.0:
        raise ConfigError(f"close_set + open_set must stay below 1, got {close_set} + {open_set}")
    if merge_identities < 0 or split_identities < 0:
        raise ConfigError(f"merge_identities and split_identities must be 0 or more, got {merge_identities} and {split_identities}")
    return close_set, open_set


def _check_source(src_index: DatasetIndex, dst: str | os.PathLike, merge_identities: int, split_identities: int) -> Path:
    """Refuse an empty source, an output inside the source, and more merges and splits than identities; ``dst`` as a Path."""
    if len(src_index) == 0:
        raise DataError(f"the dataset {src_index.root} has no samples")
    dst = Path(dst)
    if src_index.kind != "rec" and _inside(dst, Path(src_index.root)):
        raise ConfigError(f"the output {dst} lies inside the source dataset {src_index.root}; choose another folder")
    check_not_source(src_index, dst)  # nor may the output hold the source (an ancestor of its folder, or of a manifest's images)
    c = src_index.num_identities
    if 2 * merge_identities + split_identities > c:
        raise ConfigError(f"{merge_identities} merges and {split_identities} splits need {2 * merge_identities + split_identities} identities; {src_index.root} has {c}")
    return dst


def _identity_noise(src_index: DatasetIndex, rng: np.random.Generator, merge_identities: int, split_identities: int) -> _Plan:
    """The clean labels of ``src_index`` with identity-level noise: merges, then splits among the identities left."""
    names = list(src_index.names)
    labels = src_index.labels
    plan = _Plan(
        names=names,
        true_names=np.array(names, dtype=object)[labels],
        assigned=np.array(names, dtype=object)[labels],
        kind=np.array(["clean"] * len(src_index), dtype=object),
    )
    order = rng.permutation(src_index.num_identities)
    _merge(plan, [(names[order[2 * k]], names[order[2 * k + 1]]) for k in range(merge_identities)])
    counts = src_index.counts()
    rest = [names[j] for j in order[2 * merge_identities :] if counts[j] >= 2]
    if len(rest) < split_identities:
        raise ConfigError(f"{split_identities} splits need identities with at least 2 images besides the merged ones; {src_index.root} has {len(rest)}")
    _split(plan, rng, rest[:split_identities])
    absorbed_names = {a for _, a in plan.merges}
    plan.out_names = sorted({*names, *(s for _, s in plan.splits)} - absorbed_names)
    plan.owner = {name: name for name in names}
    plan.owner.update({new: name for name, new in plan.splits})
    return plan


def _merge(plan: _Plan, merges: list[tuple[str, str]]) -> None:
    """Relabel the images of each absorbed identity as the kept one (noise type ``merged``)."""
    for kept, absorbed in merges:
        moved = plan.assigned == absorbed
        plan.assigned[moved] = kept
        plan.kind[moved] = "merged"
    plan.merges = merges


def _split(plan: _Plan, rng: np.random.Generator, identities: list[str]) -> None:
    """Move a random half of the images of each of ``identities`` to a new ``<name>__split`` identity."""
    taken_names = set(plan.names)
    for name in identities:
        new = name + SPLIT_SUFFIX
        while new in taken_names:
            new += "_"
        taken_names.add(new)
        members = np.flatnonzero(plan.assigned == name)
        moved = rng.choice(members, size=len(members) // 2, replace=False)
        plan.assigned[moved] = new
        plan.kind[moved] = "split"
        plan.splits.append((name, new))


def _open_set_count(open_set: float, n: int) -> int:
    """Outside images to add so that they are ``open_set`` of the ``n`` + added images."""
    return int(round(open_set * n / (1.0 - open_set))) if open_set > 0 else 0


def _close_set_noise(plan: _Plan, rng: np.random.Generator, close_set: float, total: int) -> None:
    """Relabel ``round(close_set * total)`` random clean images as another identity (not their own)."""
    n_close = int(round(close_set * total))
    candidates = np.flatnonzero(plan.kind == "clean")
    if n_close > len(candidates):
        raise ConfigError(f"close_set {close_set} asks for {n_close} relabelled images but only {len(candidates)} are left clean")
    if n_close and len(plan.out_names) < 2:
        raise ConfigError("close-set noise needs at least 2 identities")
    for i in rng.choice(candidates, size=n_close, replace=False):
        choices = [m for m in plan.out_names if plan.owner[m] != plan.true_names[i]]
        plan.assigned[i] = choices[int(rng.integers(len(choices)))]
        plan.kind[i] = "close-set"


def _open_set_noise(plan: _Plan, rng: np.random.Generator, open_set: float, n_open: int, outside: DatasetIndex | None) -> None:
    """Draw ``n_open`` distinct images of ``outside`` and a random identity of the set for each."""
    if not n_open:
        return
    if outside is None or len(outside) == 0:
        raise DataError(f"open_set {open_set} needs outside faces (an outside dataset of other people); none were given")
    if len(outside) < n_open:
        raise DataError(f"open_set {open_set} needs {n_open} outside images but {outside.root} has {len(outside)}; lower the rate or add faces")
    shared = sorted(set(outside.names) & set(plan.names))
    if shared:
        raise DataError(f"the outside dataset {outside.root} shares {len(shared)} identity name(s) with the source (e.g. {shared[0]!r}); open-set faces must be of other people")
    plan.open_ids = np.sort(rng.choice(len(outside), size=n_open, replace=False))
    plan.open_assigned = [plan.out_names[int(k)] for k in rng.integers(len(plan.out_names), size=n_open)]


class _FileNames:
    """Output file names per folder: a file keeps its (safe) name unless it is taken, else gets ``stem~2.ext``..."""

    def __init__(self) -> None:
        self.used: dict[str, set[str]] = {}

    def claim(self, folder: str, file: str) -> str:
        """The path ``<folder>/<name>`` for ``file`` in ``folder``, unique among the claimed ones."""
        from cleanface.data.folder import safe_name

        taken = self.used.setdefault(folder, set())
        base = safe_name(file)
        stem, ext = os.path.splitext(base)
        k = 2
        while base in taken:
            base = f"{stem}~{k}{ext}"
            k += 1
        taken.add(base)
        return f"{folder}/{base}"


def _layout(plan: _Plan, src_index: DatasetIndex, outside: DatasetIndex | None) -> tuple[dict[str, str], list[tuple[str, str, str, str, str]], list[tuple[DatasetIndex, int, str]]]:
    """Where every output image goes, ``<assigned folder>/<file>``, source images first, then the open-set ones.

    Returns
    -------
    folders
        Noisy identity -> its folder name.
    rows
        Truth rows (:data:`TRUTH_COLUMNS`), in output order.
    jobs
        ``(index, sample, relative path)`` of every image to write.
    """
    folders = _safe_folders(plan.out_names)
    files = _FileNames()
    rows: list[tuple[str, str, str, str, str]] = []
    jobs: list[tuple[DatasetIndex, int, str]] = []
    for i in range(len(src_index)):
        rel = files.claim(folders[plan.assigned[i]], src_index.paths[i].rsplit("/", 1)[-1])
        rows.append((rel, str(plan.true_names[i]), str(plan.assigned[i]), str(plan.kind[i]), src_index.location(i)))
        jobs.append((src_index, i, rel))
    for k, i in enumerate(plan.open_ids.tolist()):
        assert outside is not None
        rel = files.claim(folders[plan.open_assigned[k]], outside.paths[i].rsplit("/", 1)[-1])
        rows.append((rel, OUTSIDE, plan.open_assigned[k], "open-set", outside.location(i)))
        jobs.append((outside, i, rel))
    return folders, rows, jobs


def _write_images(stage: Path, folders: dict[str, str], jobs: list[tuple[DatasetIndex, int, str]], *, copy: bool, progress: Any, what: str) -> None:
    """Create the identity folders in ``stage`` and link or copy every image of ``jobs`` into them."""
    from cleanface.data.folder import LINKS_MARKER

    task = progress.add_task(what, total=len(jobs))
    for folder in folders.values():
        (stage / folder).mkdir(exist_ok=True)
    symlinked = False
    for index, i, rel in jobs:
        target = stage / rel
        if target.exists() or target.is_symlink():
            target.unlink()
        symlinked |= _place(index, i, target, copy)
        progress.advance(task)
    if symlinked:
        (stage / LINKS_MARKER).write_text("symlinks in this folder were written by cleanface\n")


def _write_truth(stage: Path, rows: list[tuple[str, str, str, str, str]]) -> dict[str, int]:
    """Sort ``rows`` by path (in place), write them as ``stage/noise_truth.csv``; the images per noise type."""
    rows.sort(key=lambda r: r[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TRUTH_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(stage / TRUTH_FILE, buf.getvalue())
    type_counts = {t: 0 for t in NOISE_TYPES}
    for r in rows:
        type_counts[r[3]] += 1
    return type_counts


def read_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``noise_truth.csv`` (or the folder holding it).

    Returns
    -------
    dict of str to ndarray of shape (R,)
        The columns of :data:`TRUTH_COLUMNS` as string arrays, plus ``is_noise`` (bool):
        True for every row whose ``noise_type`` is not ``clean``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read noise truth {path}: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header[: len(TRUTH_COLUMNS)]) != TRUTH_COLUMNS:
        raise DataError(f"{path} is not a noise truth file: expected the header {','.join(TRUTH_COLUMNS)}, got {','.join(header or [])[:80]!r}")
    columns: list[list[str]] = [[] for _ in TRUTH_COLUMNS]
    for lineno, row in enumerate(reader, start=2):
        if len(row) < len(TRUTH_COLUMNS):
            raise DataError(f"{path} line {lineno}: expected {len(TRUTH_COLUMNS)} fields, got {len(row)}")
        if row[3] not in NOISE_TYPES:
            raise DataError(f"{path} line {lineno}: unknown noise type {row[3]!r}; expected one of {', '.join(NOISE_TYPES)}")
        for col, value in zip(columns, row):
            col.append(value)
    out = {name: np.array(col, dtype=str) for name, col in zip(TRUTH_COLUMNS, columns)}
    out["is_noise"] = out["noise_type"] != "clean"
    return out


def align_truth(truth: dict[str, np.ndarray], index: DatasetIndex) -> dict[str, np.ndarray]:
    """The truth rows of the samples of ``index`` (an index of the noisy folder), in index order.

    Returns
    -------
    dict of str to ndarray of shape (N,)
        Same keys as :func:`read_truth`.

    Raises
    ------
    DataError
        A sample of ``index`` has no truth row.
    """
    position = {p: k for k, p in enumerate(truth["path"].tolist())}
    rows = np.empty(len(index), dtype=np.int64)
    for i, p in enumerate(index.paths):
        k = position.get(p)
        if k is None:
            raise DataError(f"{index.location(i)} has no row in the noise truth; was the dataset changed after noise injection?")
        rows[i] = k
    return {key: value[rows] for key, value in truth.items()}
