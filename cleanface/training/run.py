"""Run directories: what a training run writes, and loading a finished run back.

Layout (docs/ARCHITECTURE.md): ``config.json``, ``identities.txt``, ``checkpoints/last.pt``,
``model.pt`` (``{"backbone", "head", "config", "names"}``), ``metrics.jsonl``, ``eval.json``,
``report/``, and ``COMPLETE`` written last.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cleanface._atomic import atomic_write_bytes
from cleanface.errors import CheckpointError
from cleanface.losses import create_head
from cleanface.models import create_backbone
from cleanface.training import checkpoint

MODEL = "model.pt"
LAST = os.path.join("checkpoints", "last.pt")


@dataclass
class LoadedRun:
    """A trained model: its settings, backbone (eval mode), head and identity names in label order."""

    config: dict[str, Any]
    backbone: nn.Module
    head: nn.Module
    names: list[str]


def write_names(run_dir: Path, names: list[str]) -> None:
    """``identities.txt``: one name per line in label order (undecodable bytes kept via surrogateescape)."""
    atomic_write_bytes(run_dir / "identities.txt", "".join(f"{n}\n" for n in names).encode("utf-8", "surrogateescape"))


def build_models(config: dict[str, Any], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A fresh backbone and a single-process head for ``config``."""
    backbone = create_backbone(config["backbone"], embedding_size=int(config["embedding_size"]), input_size=int(config["input_size"]))
    kw = {k: v for k, v in config.get("head_kwargs", {}).items() if k != "sample_rate"}  # evaluation uses every class
    head = create_head(config["head"], int(config["embedding_size"]), num_classes, **kw)
    return backbone, head


def load_model_file(path: Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A ``model.pt`` written by the trainer, with its models rebuilt from the config it carries."""
    state = checkpoint.load(path, map_location="cpu")
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
    names_file = path / "identities.txt"
    if names_file.is_file():
        names = names_file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        if len(names) != len(loaded.names):
            raise CheckpointError(f"run {path}: identities.txt lists {len(names)} identities but {MODEL} was trained on {len(loaded.names)}")
    return loaded


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """``config.json`` of a run directory, or None when there is none."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
