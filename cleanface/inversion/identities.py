"""What do an identity's sub-centers look like? Invert them (or any embeddings) to images on disk.

Output layout (one folder, built under a staging name and moved into place when complete)::

    OUT/inversion.json                      settings, and one entry per image (see below)
    OUT/<identity-dir>/subcenter_<k>.png    sub-center k of an identity
    OUT/<identity-dir>/center.png           the identity centre (mean of its sub-centers, normalised),
                                            written instead when only one image per identity is asked
                                            and the dominant sub-center is unknown
    OUT/embeddings/row_<i>.png              row i of an embeddings file
    OUT/COMPLETE                            written last

``<identity-dir>`` is the identity name made safe for file systems (:func:`safe_names`);
``inversion.json`` maps names to folders, so readers should take folder names from it.
``inversion.json`` holds ``{"run", "purify", "kind", "settings", "seconds", "mean_cos",
"min_cos", "bn_distance", "identities": [{"name", "label", "dir", "files", "dominant", "votes"}],
"items": [{"file", "target", "identity", "label", "subcenter", "dominant", "votes", "row", "cos"}]}``
where ``target`` is ``subcenter``, ``center`` or ``embedding``, ``dominant`` is true/false
(null when unknown), ``votes`` the number of the identity's images whose nearest sub-center
it is (from a purify directory, else null) and ``cos`` the cosine between the embedding of
the written image and its target.

Which sub-center is dominant comes from a purify output directory: its ``decisions.csv``
(columns ``old_identity``, ``nearest_subcenter``) gives the votes, the most voted
sub-center is dominant; an ``analysis.npz`` holding a per-identity ``dominant_subcenter``
array is used when ``decisions.csv`` is absent.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from cleanface._atomic import atomic_write_bytes, atomic_write_json, mark_complete, staging_dir
from cleanface.errors import ConfigError, DataError
from cleanface.inversion.image_prior import ImagePrior
from cleanface.inversion.invert import invert

#: largest number of embedding rows inverted without an explicit row selection
MAX_ROWS = 1000

#: training images drawn for the image prior by default (their average face is where the images start)
PRIOR_IMAGES = 1000

#: eigenfaces of the default image prior (0: the per-pixel prior)
PRIOR_COMPONENTS = 128


@dataclass(frozen=True)
class Target:
    """One vector to invert and where its image goes."""

    vector: np.ndarray
    file: str
    meta: dict[str, Any]


def safe_names(names: Sequence[str]) -> list[str]:
    """File-system-safe, unique folder names for identity ``names`` (same order).

    Characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``; leading dots
    are dropped; a name that is empty or collides with an earlier one gets ``-<position>``.
    """
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")[:120] or "identity"
        if safe.lower() in seen or safe == "embeddings":
            safe = f"{safe}-{i}"
        seen.add(safe.lower())
        out.append(safe)
    return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()


# -- dominant sub-centers from a purify directory ---------------------------------------------
def read_votes(purify_dir: str | os.PathLike, names: Sequence[str], k: int) -> dict[str, np.ndarray]:
    """Per identity of ``names``, the votes of its images for each of its K sub-centers: name -> int64 (K,).

    Read from ``purify_dir/decisions.csv`` (``old_identity`` and ``nearest_subcenter``
    columns); identities with no row get zero votes. Raises :class:`DataError` when the
    file is missing or lacks the columns.
    """
    path = Path(purify_dir) / "decisions.csv"
    if not path.is_file():
        raise DataError(f"{path} not found; pass a purify output directory to --purify")
    wanted = set(names)
    votes = {name: np.zeros(k, dtype=np.int64) for name in names}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"old_identity", "nearest_subcenter"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            name = row["old_identity"]
            if name in wanted:
                try:
                    j = int(row["nearest_subcenter"])
                except ValueError:
                    continue  # no sub-center recorded for this image
                if 0 <= j < k:
                    votes[name][j] += 1
    return votes


def read_dominant(purify_dir: str | os.PathLike, names: Sequence[str], labels: Sequence[int], k: int) -> dict[str, tuple[int | None, np.ndarray | None]]:
    """Dominant sub-center and votes of each identity: name -> (dominant k or None, votes (K,) or None).

    ``decisions.csv`` is preferred (votes, then the most voted sub-center; None when an
    identity has no votes); without it, ``analysis.npz`` must hold ``dominant_subcenter``
    of shape (C,) indexed by label (no votes then).
    """
    purify_dir = Path(purify_dir)
    if not purify_dir.is_dir():
        raise DataError(f"purify directory {purify_dir} not found")
    if (purify_dir / "decisions.csv").is_file():
        votes = read_votes(purify_dir, names, k)
        return {n: ((int(np.argmax(v)) if v.sum() else None), v) for n, v in votes.items()}
    npz = purify_dir / "analysis.npz"
    if not npz.is_file():
        raise DataError(f"{purify_dir} holds neither decisions.csv nor analysis.npz; is it a purify output directory?")
    try:
        with np.load(npz, allow_pickle=False) as data:
            if "dominant_subcenter" not in data.files:
                raise DataError(f"{npz} has no dominant_subcenter array (keys: {', '.join(data.files)})")
            dominant = np.asarray(data["dominant_subcenter"], dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {npz}: {exc}") from exc
    out: dict[str, tuple[int | None, np.ndarray | None]] = {}
    for name, label in zip(names, labels):
        if not 0 <= label < len(dominant):
            raise DataError(f"{npz} has dominant sub-centers for {len(dominant)} identities, but {name!r} has label {label}")
        d = int(dominant[label])
        out[name] = ((d if 0 <= d < k else None), None)
    return out


# -- targets ------------------------------------------------------------------------------------
def resolve_names(names: Sequence[str], run_names: Sequence[str]) -> list[int]:
    """Labels of ``names`` in ``run_names``; an unknown name raises :class:`ConfigError` with close matches."""
    lookup = {n: i for i, n in enumerate(run_names)}
    labels = []
    for name in names:
        if name not in lookup:
            close = difflib.get_close_matches(name, list(run_names), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"identity {name!r} is not one of the run's {len(run_names)} identities{hint}")
        labels.append(lookup[name])
    return labels


def subcenter_targets(
    centers: np.ndarray,
    names: Sequence[str],
    labels: Sequence[int],
    dirs: Sequence[str],
    *,
    all_subcenters: bool,
    dominance: dict[str, tuple[int | None, np.ndarray | None]] | None = None,
) -> list[Target]:
    """The vectors to invert for identities ``names`` (labels ``labels``) given ``centers`` (C, K, D).

    With ``all_subcenters`` every sub-center; otherwise one per identity: its dominant
    sub-center when known (or the only one when K = 1), else the identity centre.
    """
    k = centers.shape[1]
    out: list[Target] = []
    for name, label, folder in zip(names, labels, dirs):
        dom, votes = (dominance or {}).get(name, (None, None))
        base = {"identity": name, "label": int(label), "row": None}
        if k == 1 and dom is None:
            dom = 0
        picks = range(k) if all_subcenters else ([dom] if dom is not None else [])
        for j in picks:
            meta = {**base, "target": "subcenter", "subcenter": j, "dominant": (None if dom is None else j == dom),
                    "votes": (None if votes is None else int(votes[j]))}
            out.append(Target(centers[label, j], f"{folder}/subcenter_{j}.png", meta))
        if not all_subcenters and dom is None:
            mean = centers[label].mean(axis=0)
            meta = {**base, "target": "center", "subcenter": None, "dominant": None, "votes": None}
            out.append(Target(mean / max(float(np.linalg.norm(mean)), 1e-12), f"{folder}/center.png", meta))
    return out


def parse_rows(spec: str | None, count: int) -> list[int]:
    """Rows named by ``spec`` (``"0,3,10-19"``; None: all ``count``), each checked against ``count``."""
    if spec is None:
        if count > MAX_ROWS:
            raise ConfigError(f"the embeddings file has {count} rows; choose at most {MAX_ROWS} with --rows (e.g. 0-99)")
        return list(range(count))
    rows: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"bad row selection {part!r} in {spec!r}; use numbers and ranges like 0,3,10-19")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= count:
            raise ConfigError(f"rows {part!r} are outside the embeddings file's {count} rows")
        rows.extend(range(lo, hi + 1))
    return list(dict.fromkeys(rows))


def embedding_targets(path: str | os.PathLike, d: int, rows: str | None = None) -> list[Target]:
    """Targets for rows of the ``.npy`` file ``path`` of shape (N, D) (``rows``: see :func:`parse_rows`)."""
    path = Path(path)
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read embeddings file {path}: {exc}") from exc
    if data.ndim != 2 or data.shape[1] != d:
        raise DataError(f"{path} has shape {data.shape}; expected (N, {d}) to match the run's embedding size")
    out = []
    for i in parse_rows(rows, data.shape[0]):
        vec = np.asarray(data[i], dtype=np.float32)
        out.append(Target(vec, f"embeddings/row_{i:04d}.png", {"identity": None, "label": None, "row": i, "target": "embedding", "subcenter": None, "dominant": None, "votes": None}))
    return out


# -- running and writing ------------------------------------------------------------------------
def write_inversions(
    backbone: nn.Module,
    targets: Sequence[Target],
    out_dir: str | os.PathLike,
    *,
    size: int,
    batch_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    silent: bool = False,
    info: dict[str, Any] | None = None,
    **invert_kw: Any,
) -> Path:
    """Invert ``targets`` in batches of ``batch_size`` and write the PNGs and ``inversion.json`` to ``out_dir``.

    Batch ``b`` uses seed ``seed + b``. ``info`` is merged into ``inversion.json``; the
    other keyword arguments go to :func:`cleanface.inversion.invert.invert`.
    """
    if not targets:
        raise ConfigError("nothing to invert: name identities or give an embeddings file")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    items: list[dict[str, Any]] = []
    distances: list[float] = []
    settings: dict[str, Any] = {}
    seconds = 0.0
    start = time.perf_counter()
    with staging_dir(out_dir, overwrite=overwrite) as stage:
        for b, first in enumerate(range(0, len(targets), batch_size)):
            chunk = targets[first:first + batch_size]
            result = invert(backbone, np.stack([t.vector for t in chunk]), size=size, seed=seed + b, silent=silent, **invert_kw)
            seconds += result.seconds
            distances.append(result.bn_distance)
            settings = {**result.settings, "seed": seed, "batch_size": batch_size}
            settings.pop("targets", None)
            for target, image, cos in zip(chunk, result.images, result.final_cos):
                atomic_write_bytes(stage / target.file, _png(image))
                items.append({**target.meta, "file": target.file, "cos": round(float(cos), 6)})
        cos_all = np.array([it["cos"] for it in items])
        atomic_write_json(stage / "inversion.json", {
            **(info or {}),
            "settings": settings,
            "seconds": round(time.perf_counter() - start, 3),
            "optimise_seconds": round(seconds, 3),
            "mean_cos": round(float(cos_all.mean()), 6),
            "min_cos": round(float(cos_all.min()), 6),
            "bn_distance": [None if np.isnan(d) else round(d, 6) for d in distances],
            "identities": _identity_summary(items),
            "items": items,
        })
        mark_complete(stage)
    return Path(out_dir)


def _identity_summary(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for it in items:
        if it["identity"] is None:
            continue
        entry = by_name.setdefault(it["identity"], {"name": it["identity"], "label": it["label"], "dir": it["file"].split("/")[0],
                                                    "files": [], "dominant": None, "votes": None})
        entry["files"].append(it["file"])
        if it["dominant"]:
            entry["dominant"] = it["subcenter"]
        if it["votes"] is not None:
            entry["votes"] = (entry["votes"] or []) + [it["votes"]]
    return list(by_name.values())


def sample_image_prior(data: str | os.PathLike, config: dict[str, Any], count: int, *, seed: int = 0, components: int = 0) -> ImagePrior:
    """The image prior of ``count`` images drawn at random (``seed``) from the dataset ``data``, decoded as the run
    trained on them (its ``input_size`` and ``crop``); ``components`` > 0: its eigenface model of that many components."""
    from cleanface.data.open import open_dataset

    if count < 2:
        raise ConfigError(f"the image prior needs at least 2 images, got {count}")
    index = open_dataset(data, silent=True)
    if len(index) < 2:
        raise DataError(f"{data} holds {len(index)} image(s); the image prior needs at least 2")
    rows = np.sort(np.random.default_rng(seed).choice(len(index), size=min(count, len(index)), replace=False))
    return image_prior_of(index, rows, config, components=components)


def image_prior_of(index: Any, rows: Sequence[int], config: dict[str, Any], *, components: int = 0) -> ImagePrior:
    """The image prior of the images ``rows`` of the dataset ``index``, decoded as the run (``config``) trained on them."""
    from cleanface.data.images import decode_image

    size, crop = int(config["input_size"]), config.get("crop")
    return ImagePrior.from_images(np.stack([decode_image(index.read_bytes(int(i)), size=size, crop=crop) for i in rows]), components=components)


def _prior_source(run_dir: str | os.PathLike, config: dict[str, Any], data: str | os.PathLike | None) -> str | os.PathLike:
    """The dataset the image prior is drawn from: ``data``, else the run's training data; an error naming what is missing."""
    source = data or config.get("data")
    if not source:
        raise ConfigError(f"the config of {run_dir} names no training data for the image prior; give a dataset of such faces "
                          "(--data), or start from noise (--prior-images 0)")
    if not os.path.exists(source):
        raise DataError(f"{source}, the training data of {run_dir}, is not there for the image prior; give a dataset of such faces "
                        "(--data), or start from noise (--prior-images 0)")
    return source


def _load_run(run_dir: str | os.PathLike, device: str) -> Any:
    from cleanface.inference.run import load_run

    return load_run(run_dir, device=device)


def invert_identities(
    run_dir: str | os.PathLike,
    names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    sub_centers: bool = True,
    purify_dir: str | os.PathLike | None = None,
    embeddings: str | os.PathLike | None = None,
    rows: str | None = None,
    all_identities: bool = False,
    prior_images: int = PRIOR_IMAGES,
    prior_components: int = PRIOR_COMPONENTS,
    data: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 32,
    overwrite: bool = False,
    silent: bool = False,
    **invert_kw: Any,
) -> Path:
    """Invert the sub-centers of identities ``names`` of a trained run (and/or rows of an embeddings file).

    Parameters
    ----------
    run_dir : path-like
        A training run directory (``model.pt``, ``config.json``, ``identities.txt``).
    names : sequence of str
        Identity names of the run (may be empty when ``embeddings`` is given).
    out_dir : path-like
        Output folder (layout in the module docstring); must be empty unless ``overwrite``.
    sub_centers : bool
        Every sub-center of each identity; otherwise one image per identity (its dominant
        sub-center when ``purify_dir`` says which, else its centre).
    purify_dir : path-like, optional
        A purify output directory, to mark dominant sub-centers and count their votes.
    embeddings : path-like, optional
        A ``.npy`` file of shape (N, D) whose rows (``rows``, e.g. ``"0-9"``) are inverted too.
    all_identities : bool
        Every identity of the run (``names`` must then be empty).
    prior_images, prior_components, data
        The image prior (:mod:`cleanface.inversion.image_prior`): this many images drawn from
        ``data`` (default: the run's training data; 0 images: start from noise), with this
        many eigenfaces (0: the per-pixel prior).
    seed, device, batch_size, **invert_kw
        Optimisation settings (see :func:`cleanface.inversion.invert.invert`).
    overwrite, silent : bool

    Returns
    -------
    Path
        ``out_dir``.
    """
    if all_identities and names:
        raise ConfigError("name identities or ask for all of them, not both")
    if not names and not all_identities and embeddings is None:
        raise ConfigError("nothing to invert: name at least one identity or give an embeddings file")
    loaded = _load_run(run_dir, "cpu")
    config = loaded.config
    if all_identities:
        names = list(loaded.names)
    if prior_images:
        invert_kw["image_prior"] = sample_image_prior(_prior_source(run_dir, config, data), config, prior_images, seed=seed,
                                                      components=prior_components)
    size = int(config["input_size"])
    centers = centers_of(loaded.head)
    labels = resolve_names(names, loaded.names)
    dirs = safe_names(loaded.names)
    dirs = [dirs[label] for label in labels]
    dominance = read_dominant(purify_dir, names, labels, centers.shape[1]) if purify_dir is not None and names else None
    targets = subcenter_targets(centers, names, labels, dirs, all_subcenters=sub_centers, dominance=dominance)
    if embeddings is not None:
        targets += embedding_targets(embeddings, centers.shape[2], rows)
    kind = "+".join(k for k, on in (("subcenters" if sub_centers else "identities", bool(names)), ("embeddings", embeddings is not None)) if on)
    info = {"run": str(run_dir), "purify": None if purify_dir is None else str(purify_dir), "kind": kind,
            "embeddings_file": None if embeddings is None else str(embeddings), "backbone": config.get("backbone"), "k": int(centers.shape[1])}
    return write_inversions(
        loaded.backbone, targets, out_dir, size=size, batch_size=batch_size, seed=seed, overwrite=overwrite, silent=silent, info=info,
        device=device, **invert_kw,
    )


def centers_of(head: nn.Module) -> np.ndarray:
    """``head.class_centers()`` as float32 (C, K, D) (a (C, D) result is read as K = 1)."""
    c = head.class_centers()
    c = c.detach().float().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c, dtype=np.float32)
    return c[:, None, :] if c.ndim == 2 else c


__all__ = [
    "MAX_ROWS", "PRIOR_COMPONENTS", "PRIOR_IMAGES", "Target", "image_prior_of", "sample_image_prior", "safe_names", "read_votes", "read_dominant", "resolve_names", "subcenter_targets",
    "parse_rows", "embedding_targets", "write_inversions", "invert_identities", "centers_of",
]
