"""Every setting of a training run, with defaults that suit the machine it runs on.

A :class:`TrainConfig` is written whole to ``RUN/config.json``; a resumed run must find the
same settings there (only the run-time knobs in :data:`RESUMABLE_CHANGES` may differ).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from cleanface.errors import ConfigError

AMP_MODES = ("auto", "off", "bf16", "fp16")
SCHEDULES = ("poly", "cosine", "constant")
RESUMABLE_CHANGES = frozenset({"device", "workers", "checkpoint_every", "log_every", "silent", "val_pairs", "val_images", "compile"})

# Sensible per-machine defaults: a small network and small faces on CPU, the reference recipe on GPU.
CPU_DEFAULTS = {"backbone": "compact", "input_size": 64, "embedding_size": 128, "batch_size": 64}
GPU_DEFAULTS = {"backbone": "iresnet50", "input_size": 112, "embedding_size": 512, "batch_size": 128}
# The head on CPU: the small compact model on a few thousand to a few hundred thousand faces trains with a
# softer head than the published s=64, m=0.5 recipe for iResNet-50 on millions. Measured (BENCHMARKS.md,
# "Training that does not collapse"): on the CelebA noisy set (177 identities x about 28 faces) s=64 / m=0.5
# stays at 0% training accuracy and purify refuses the collapsed model, s=32 / m=0.3 trains and cleans.
CPU_HEAD_DEFAULTS = {"scale": 32.0}
CPU_ANGULAR_MARGIN = 0.3  # radians, for the angular-margin heads (ArcFace, sub-center ArcFace, ElasticFace-Arc)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    """Settings of one training run (``None`` means: the default for this device).

    Attributes
    ----------
    head : str
        Margin head name (:func:`cleanface.losses.list_heads`).
    backbone, input_size, embedding_size, batch_size
        ``None``: compact / 64 / 128 / 64 on CPU; iresnet50 / 112 / 512 / 128 on CUDA.
    crop : int or None
        Centre square crop (source pixels) before resizing to ``input_size``.
    k, margin, scale, sigma, sample_rate
        Head options; ``None`` keeps the head's own default (s=64, m=0.5, K=3 ...), except on
        CPU, where ``scale`` is 32 and the angular heads' ``margin`` 0.3 (:data:`CPU_HEAD_DEFAULTS`).
    epochs, lr, momentum, weight_decay, warmup_epochs, schedule, power
        SGD with linear warm-up, then polynomial (``power``) or cosine decay per step.
    grad_clip : float or None
        Gradient-norm clip on the backbone (5 in the reference recipe; 0 or None: off).
    amp : {"auto", "off", "bf16", "fp16"}
        ``auto``: fp16 with a grad scaler on CUDA (bf16 where supported), off on CPU.
    channels_last, compile : bool or None
        CUDA speed-ups (``None``: channels_last on CUDA, compile off).
    checkpoint_every : int
        Steps between checkpoints (0: at each epoch end only); one is always written at the end.
    log_every : int
        Steps between lines of ``metrics.jsonl``.
    seed, device, workers, cache, cache_dir
        Reproducibility, placement and data loading (``cache``: decode-once cache).
    val_pairs, val_images
        Verification pairs evaluated at the end of training (``eval.json``).
    init : str or None
        Start from pretrained weights (:mod:`cleanface.training.init`): a backbone state dict
        (``.pth`` / ``.pt``, the arcface_torch layout), a cleanface ``model.pt`` or run directory.
        The head's sub-centers then start at the class means of the initial embeddings.
        A resumed run continues from its checkpoint and does not read it again.
    """

    head: str = "subcenter-arcface"
    backbone: str | None = None
    input_size: int | None = None
    embedding_size: int | None = None
    crop: int | None = None
    k: int | None = None
    margin: float | None = None
    scale: float | None = None
    sigma: float | None = None
    sample_rate: float = 1.0
    epochs: int = 20
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "poly"
    power: float = 1.0
    grad_clip: float | None = 5.0
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str | None = None
    workers: int = 0
    cache: bool = True
    cache_dir: str | None = None
    val_pairs: str | None = None
    val_images: str | None = None
    init: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every device-dependent ``None`` replaced by its value, checked."""
        c = dataclasses.replace(self, extra=dict(self.extra))
        c.device = c.device or default_device()
        if c.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {c.device!r} was asked for but CUDA is not available here; use --device cpu")
        defaults = GPU_DEFAULTS if c.device.startswith("cuda") else CPU_DEFAULTS
        for key, value in defaults.items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if not c.device.startswith("cuda"):
            for key, value in CPU_HEAD_DEFAULTS.items():
                if getattr(c, key) is None:
                    setattr(c, key, value)
            if c.margin is None and "arc" in c.head:
                c.margin = CPU_ANGULAR_MARGIN
        if c.channels_last is None:
            c.channels_last = c.device.startswith("cuda")
        if c.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {c.amp!r}")
        if c.amp == "auto":
            c.amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if c.device.startswith("cuda") else "off"
        if c.amp == "fp16" and not c.device.startswith("cuda"):
            raise ConfigError("amp fp16 needs CUDA; on CPU use amp=bf16 or off")
        if c.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
        for name in ("epochs", "batch_size", "input_size", "embedding_size", "log_every"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("checkpoint_every", "workers", "seed"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not c.lr > 0:
            raise ConfigError(f"lr must be positive, got {c.lr}")
        if c.warmup_epochs < 0 or c.weight_decay < 0 or not 0 <= c.momentum < 1:
            raise ConfigError("warmup_epochs and weight_decay must be >= 0 and momentum in [0, 1)")
        if c.grad_clip == 0:
            c.grad_clip = None  # 0 turns clipping off (TOML has no null)
        if c.grad_clip is not None and not c.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive, or 0 / unset for no clipping, got {c.grad_clip}")
        if c.crop is not None and (isinstance(c.crop, bool) or not isinstance(c.crop, int) or c.crop < 1):
            raise ConfigError(f"crop must be a positive integer or unset, got {c.crop!r}")
        if c.init is not None:
            if not isinstance(c.init, (str, os.PathLike)):
                raise ConfigError(f"init must be a path to a weight file or a run directory, got {c.init!r}")
            c.init = os.fspath(c.init) or None  # "" (TOML has no null): no init
        if (c.val_pairs is None) != (c.val_images is None) and c.val_pairs is not None and not str(c.val_pairs).endswith(".bin"):
            raise ConfigError("val_pairs in the LFW text format needs val_images (the folder of the pair images)")
        return c

    def head_kwargs(self) -> dict[str, Any]:
        """Options passed to :func:`cleanface.losses.create_head` (unset ones dropped)."""
        kw = {"k": self.k, "margin": self.margin, "scale": self.scale, "sigma": self.sigma, "sample_rate": self.sample_rate}
        return {k: v for k, v in kw.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from(head: str, settings: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from keyword settings; unknown keys fail with the valid list."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"head", "extra"}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return TrainConfig(head=head, **settings)
