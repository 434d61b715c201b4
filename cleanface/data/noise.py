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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleanface._atomic import atomic_write_json, atomic_write_text, staging_dir
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
    """Put sample ``i`` of ``index`` at ``dst``; True when a symlink was made."""
    if index.kind == "rec":
        dst.write_bytes(index.read_bytes(i))
        return False
    src = index.abspath(i)
    try:
        if not copy:
            try:
                os.link(src, dst)
                return False
            except OSError:
                pass
            try:
                os.symlink(os.path.realpath(src), dst)
                return True
            except OSError:
                pass
        shutil.copyfile(src, dst)
    except OSError as exc:
        raise DataError(f"cannot write {src} to {dst}: {exc.strerror or exc}") from None
    return False


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
    close_set = _check_rate("close_set", close_set)
    open_set = _check_rate("open_set", open_set)
    if close_set + open_set >= 1.0:
        raise ConfigError(f"close_set + open_set must stay below 1, got {close_set} + {open_set}")
    if merge_identities < 0 or split_identities < 0:
        raise ConfigError(f"merge_identities and split_identities must be 0 or more, got {merge_identities} and {split_identities}")
    n, c = len(src_index), src_index.num_identities
    if n == 0:
        raise DataError(f"the dataset {src_index.root} has no samples")
    dst = Path(dst)
    if src_index.kind != "rec" and _inside(dst, Path(src_index.root)):
        raise ConfigError(f"the output {dst} lies inside the source dataset {src_index.root}; choose another folder")
    if 2 * merge_identities + split_identities > c:
        raise ConfigError(f"{merge_identities} merges and {split_identities} splits need {2 * merge_identities + split_identities} identities; {src_index.root} has {c}")

    rng = np.random.default_rng(seed)
    names = list(src_index.names)
    counts = src_index.counts()
    labels = src_index.labels
    assigned = np.array(names, dtype=object)[labels]  # per source sample
    kind = np.array(["clean"] * n, dtype=object)

    # identity-level noise: merges, then splits among the identities left
    order = rng.permutation(c)
    merges = [(names[order[2 * k]], names[order[2 * k + 1]]) for k in range(merge_identities)]
    for kept, absorbed in merges:
        moved = assigned == absorbed
        assigned[moved] = kept
        kind[moved] = "merged"
    rest = [names[j] for j in order[2 * merge_identities :] if counts[j] >= 2]
    if len(rest) < split_identities:
        raise ConfigError(f"{split_identities} splits need identities with at least 2 images besides the merged ones; {src_index.root} has {len(rest)}")
    splits = []
    taken_names = set(names)
    for name in rest[:split_identities]:
        new = name + SPLIT_SUFFIX
        while new in taken_names:
            new += "_"
        taken_names.add(new)
        members = np.flatnonzero(assigned == name)
        moved = rng.choice(members, size=len(members) // 2, replace=False)
        assigned[moved] = new
        kind[moved] = "split"
        splits.append((name, new))
    absorbed_names = {a for _, a in merges}
    out_names = sorted({*names, *(s for _, s in splits)} - absorbed_names)
    owner = {name: name for name in names}
    owner.update({new: name for name, new in splits})

    # sample-level noise
    n_open = int(round(open_set * n / (1.0 - open_set))) if open_set > 0 else 0
    total = n + n_open
    n_close = int(round(close_set * total))
    candidates = np.flatnonzero(kind == "clean")
    if n_close > len(candidates):
        raise ConfigError(f"close_set {close_set} asks for {n_close} relabelled images but only {len(candidates)} are left clean")
    if n_close and len(out_names) < 2:
        raise ConfigError("close-set noise needs at least 2 identities")
    true_names = np.array(names, dtype=object)[labels]
    for i in rng.choice(candidates, size=n_close, replace=False):
        choices = [m for m in out_names if owner[m] != true_names[i]]
        assigned[i] = choices[int(rng.integers(len(choices)))]
        kind[i] = "close-set"
    open_ids = np.zeros(0, dtype=np.int64)
    open_assigned: list[str] = []
    if n_open:
        if outside is None or len(outside) == 0:
            raise DataError(f"open_set {open_set} needs outside faces (an outside dataset of other people); none were given")
        if len(outside) < n_open:
            raise DataError(f"open_set {open_set} needs {n_open} outside images but {outside.root} has {len(outside)}; lower the rate or add faces")
        shared = sorted(set(outside.names) & set(names))
        if shared:
            raise DataError(f"the outside dataset {outside.root} shares {len(shared)} identity name(s) with the source (e.g. {shared[0]!r}); open-set faces must be of other people")
        open_ids = np.sort(rng.choice(len(outside), size=n_open, replace=False))
        open_assigned = [out_names[int(k)] for k in rng.integers(len(out_names), size=n_open)]

    # layout: <assigned folder>/<file>, names kept where they do not clash
    folders = _safe_folders(out_names)
    rows: list[tuple[str, str, str, str, str]] = []
    jobs: list[tuple[DatasetIndex, int, str]] = []
    used: dict[str, set[str]] = {}

    def claim(folder: str, file: str) -> str:
        from cleanface.data.folder import safe_name

        taken = used.setdefault(folder, set())
        base = safe_name(file)
        stem, ext = os.path.splitext(base)
        k = 2
        while base in taken:
            base = f"{stem}~{k}{ext}"
            k += 1
        taken.add(base)
        return f"{folder}/{base}"

    for i in range(n):
        rel = claim(folders[assigned[i]], src_index.paths[i].rsplit("/", 1)[-1])
        rows.append((rel, str(true_names[i]), str(assigned[i]), str(kind[i]), src_index.location(i)))
        jobs.append((src_index, i, rel))
    for k, i in enumerate(open_ids.tolist()):
        assert outside is not None
        rel = claim(folders[open_assigned[k]], outside.paths[i].rsplit("/", 1)[-1])
        rows.append((rel, OUTSIDE, open_assigned[k], "open-set", outside.location(i)))
        jobs.append((outside, i, rel))

    from cleanface.data.folder import LINKS_MARKER

    with staging_dir(dst, overwrite=overwrite) as stage, make_progress(silent=silent) as progress:
        task = progress.add_task(f"writing noisy {dst.name}", total=len(jobs))
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
        rows.sort(key=lambda r: r[0])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(rows)
        atomic_write_text(stage / TRUTH_FILE, buf.getvalue())
        type_counts = {t: 0 for t in NOISE_TYPES}
        for r in rows:
            type_counts[r[3]] += 1
        summary = {
            "source": str(src_index.root),
            "outside": None if outside is None else str(outside.root),
            "settings": {"close_set": close_set, "open_set": open_set, "merge_identities": merge_identities, "split_identities": split_identities, "seed": seed, "copy": copy},
            "images": len(rows),
            "identities": len(out_names),
            "counts": type_counts,
            "merges": merges,
            "splits": splits,
        }
        atomic_write_json(stage / "noise.json", summary)
    return NoiseResult(dst, dst / TRUTH_FILE, len(rows), len(out_names), type_counts, merges, splits)


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
