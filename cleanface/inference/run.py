"""Loading a finished training run back: its settings, models, identity names and sub-centers.

Layout of a run directory (docs/ARCHITECTURE.md): ``config.json``, ``identities.txt``,
``checkpoints/last.pt``, ``model.pt`` (``{"backbone", "head", "config", "names"}``),
``metrics.jsonl``, ``train_summary.json``, ``eval.json``, and ``COMPLETE`` written last.
Training writes it (:mod:`cleanface.training`); evaluation, embedding, purification and
inversion read it through this module.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cleanface._atomic import file_sha256
from cleanface.errors import CheckpointError
from cleanface.inference.weights import load
from cleanface.losses import create_head
from cleanface.models import create_backbone

MODEL = "model.pt"
LAST = os.path.join("checkpoints", "last.pt")
NAMES = "identities.txt"
METRICS = "metrics.jsonl"


@dataclass
class LoadedRun:
    """A trained model: its settings, backbone (eval mode), head and identity names in label order."""

    config: dict[str, Any]
    backbone: nn.Module
    head: nn.Module
    names: list[str]


def build_models(config: dict[str, Any], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A fresh backbone and a single-process head for ``config``."""
    backbone = create_backbone(config["backbone"], embedding_size=int(config["embedding_size"]), input_size=int(config["input_size"]))
    kw = {k: v for k, v in config.get("head_kwargs", {}).items() if k != "sample_rate"}  # evaluation uses every class
    head = create_head(config["head"], int(config["embedding_size"]), num_classes, **kw)
    return backbone, head


def load_model_file(path: Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A ``model.pt`` written by the trainer, with its models rebuilt from the config it carries."""
    state = load(path, map_location="cpu")
    for key in ("backbone", "head", "config", "names"):
        if key not in state:
            raise CheckpointError(f"{path} is not a cleanface model file (no {key!r} entry)")
    config, names = dict(state["config"]), list(state["names"])
    backbone, head = build_models(config, len(names))
    for what, module in (("backbone", backbone), ("head", head)):
        try:
            module.load_state_dict(state[what])
        except RuntimeError as exc:
            detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:160]
            raise CheckpointError(f"{path}: the {what} weights do not fit a {config.get(what if what == 'backbone' else 'head')} model with this configuration ({detail})") from None
    backbone.to(device).eval()
    head.to(device).eval()
    return LoadedRun(config, backbone, head, names)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a finished training run (a run directory, or its ``model.pt``) for embedding or purification.

    Raises
    ------
    CheckpointError
        The directory is not a run, is unfinished, or its files disagree.
    """
    path = Path(run_dir)
    if path.is_file():
        return load_model_file(path, device)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a training run directory (no config.json)")
    if not (path / MODEL).is_file():
        hint = "resume it with --resume" if (path / LAST).is_file() else "train it first"
        raise CheckpointError(f"run {path} is not finished (no {MODEL}); {hint}")
    loaded = load_model_file(path / MODEL, device)
    names_file = path / NAMES
    if names_file.is_file():
        names = names_file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        if len(names) != len(loaded.names):
            raise CheckpointError(f"run {path}: {NAMES} lists {len(names)} identities but {MODEL} was trained on {len(loaded.names)}")
    return loaded


def read_run_names(run_dir: str | os.PathLike) -> list[str]:
    """Identity names of a run (``identities.txt``, label order), without loading its models."""
    path = Path(run_dir) / NAMES
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; is {run_dir} a training run directory?") from None
    return [line for line in text.split("\n") if line != ""]


def run_centers(loaded: LoadedRun, num_classes: int, run_dir: str | os.PathLike) -> np.ndarray:
    """Sub-centers (C, K, D) float32 of a loaded run's head, checked against the run's identity count."""
    centers = loaded.head.class_centers()
    if hasattr(centers, "detach"):
        centers = centers.detach().cpu().float().numpy()
    centers = np.asarray(centers, dtype=np.float32)
    if centers.ndim != 3 or len(centers) != num_classes:
        raise CheckpointError(f"the head of run {run_dir} has sub-centers of shape {centers.shape}, expected ({num_classes}, K, D)")
    return centers


def accuracy_per_epoch(run_dir: str | os.PathLike) -> list[float] | None:
    """The mean training accuracy of each epoch of a run, in order, from ``metrics.jsonl``; None when it cannot be read.

    A logged row belongs to epoch ``ceil(epoch) - 1`` (its ``epoch`` field is the progress
    at the end of its step, so 1.0 closes the first epoch).
    """
    sums: dict[int, list[float]] = {}
    try:
        with open(Path(run_dir) / METRICS, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                epoch, acc = row.get("epoch"), row.get("acc")
                if isinstance(epoch, (int, float)) and isinstance(acc, (int, float)):
                    sums.setdefault(max(0, math.ceil(epoch) - 1), []).append(float(acc))
    except (OSError, ValueError, AttributeError):
        return None
    return [sum(v) / len(v) for _, v in sorted(sums.items())] or None


def model_stamp(run_dir: str | os.PathLike) -> str:
    """A hash of the run's final weights (or last checkpoint): which model cached embeddings came from."""
    for name in (MODEL, LAST):
        path = Path(run_dir) / name
        if path.is_file():
            return file_sha256(path)[:16]
    return ""
