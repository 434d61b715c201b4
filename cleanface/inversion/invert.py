"""Synthesise images whose embeddings match target vectors, with the BatchNorm prior.

Notation: M targets, D embedding size, S image side, T steps. Starting from noise, the
pixels of M images are optimised jointly with Adam; step i (0-based) minimises

    loss_i = c_i * mean_m (1 - cos(f(x_m), t_m))
           + bn_weight  * R_bn(x)                 (see :mod:`cleanface.inversion.bn_prior`)
           + tv_weight  * TV(x) + l2_weight * mean(x^2)

    c_i = cos_weight * (1 + (COS_RAMP - 1) * i / (T - 1))        (c_0 = cos_weight when T = 1)

where f is the frozen backbone in eval mode (its BatchNorm running statistics are the
prior, taken over the batch of M images), TV the mean squared difference between
neighbouring pixels, and x = tanh(z) keeps the pixels in [-1, 1] while z is free.
The weight of the embedding term rises linearly from ``cos_weight`` to
``COS_RAMP * cos_weight``: early on the priors shape the images, at the end the
targets dominate. Each step shifts the batch by a random offset of up to ``jitter``
pixels (circularly) and (optionally) mirrors it, so that the images cannot hide their
identity in pixel-exact patterns. The learning rate follows a cosine decay to zero.

On the default weights: R_bn is a sum of norms, whose gradient does not shrink as the
statistics approach the running ones, while that of 1 - cos vanishes at the target. A
strong prior therefore holds the images at an angle from their targets without buying
closer statistics: with the 6-identity, 32x32 model of the inversion tests and 300
steps, R_bn of the final images ends between about 42 and 50 for any ``bn_weight``
from 0.001 to 0.02 (about 220 without the prior, 160 to 290 for batches of six real
training images), while the smallest final cosine falls from about 0.99 to about 0.87.
Hence the default of 0.002.

The result is reported on what is written out: the images are rounded to uint8 and
embedded again (no shift, no flip) to give the final cosines.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cleanface.data.images import to_tensor_batch, to_uint8
from cleanface.errors import ConfigError, TrainingError
from cleanface.inversion.bn_prior import BNPrior, bn_distance, bn_layers
from cleanface.progress import make_progress

#: the loss terms recorded per step in :attr:`InversionResult.history`
HISTORY_KEYS = ("loss", "cos", "bn", "tv", "l2")

#: the weight of the embedding term rises linearly to this multiple of ``cos_weight`` over the steps
COS_RAMP = 3.0


@dataclass
class InversionResult:
    """What :func:`invert` returns.

    Attributes
    ----------
    images : ndarray of shape (M, S, S, 3), uint8
        The synthesised RGB images, in target order.
    final_cos : ndarray of shape (M,), float32
        Cosine between the embedding of each written (uint8) image and its target.
    history : dict of str to list of float
        Per-step values of ``loss`` (weighted total, with that step's embedding weight), ``cos`` (mean cosine of the
        shifted/flipped batch), ``bn`` (R_bn, recorded even when its weight is 0),
        ``tv`` and ``l2``; each list has ``steps`` entries.
    bn_distance : float
        R_bn of the final uint8 images, unshifted (lower: closer to the training statistics).
    seconds : float
        Wall-clock time of the optimisation.
    settings : dict
        The settings used (JSON-ready).
    """

    images: np.ndarray
    final_cos: np.ndarray
    history: dict[str, list[float]]
    bn_distance: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; refuse CUDA when there is none."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


@contextlib.contextmanager
def frozen(backbone: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``backbone`` in eval mode on ``device`` with gradients off; mode, flags and device restored on exit."""
    was_training = backbone.training
    flags = [p.requires_grad for p in backbone.parameters()]
    first = next(iter(backbone.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    backbone.eval().to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    try:
        yield backbone
    finally:
        for p, flag in zip(backbone.parameters(), flags):
            p.requires_grad_(flag)
        backbone.to(home).train(was_training)


def _check_targets(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets).detach().float().cpu()
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ConfigError(f"targets must have shape (M, D) with M, D >= 1, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ConfigError("targets hold NaN or infinite values")
    norms = t.norm(dim=1)
    if (norms < 1e-12).any():
        raise ConfigError(f"target rows {torch.nonzero(norms < 1e-12).flatten().tolist()[:10]} are zero vectors and have no direction")
    return t / norms[:, None]


def _check_settings(size: int, steps: int, lr: float, weights: dict[str, float], jitter: int, init_std: float) -> None:
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be a positive number, got {lr}")
    for name, value in weights.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be 0 or more, got {value}")
    if weights["cos_weight"] == 0:
        raise ConfigError("cos_weight must be positive: without it nothing ties the images to the targets")
    if not 0 <= jitter < size // 2:
        raise ConfigError(f"jitter must be between 0 and {size // 2 - 1} pixels for {size}-pixel images, got {jitter}")
    if not (init_std > 0 and math.isfinite(init_std)):
        raise ConfigError(f"init_std must be a positive number, got {init_std}")


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean()


@torch.no_grad()
def embed_images(backbone: nn.Module, images: np.ndarray, *, device: str | torch.device = "cpu") -> np.ndarray:
    """L2-normalised embeddings of uint8 images (B, S, S, 3) under ``backbone`` in eval mode: (B, D) float32."""
    dev = resolve_device(device)
    with frozen(backbone, dev):
        out = backbone(to_tensor_batch(images).to(dev))
    return F.normalize(out.float(), dim=1).cpu().numpy()


def invert(
    backbone: nn.Module,
    targets: np.ndarray | torch.Tensor,
    *,
    size: int,
    steps: int = 300,
    lr: float = 0.1,
    bn_weight: float = 0.002,
    cos_weight: float = 1.0,
    tv_weight: float = 0.05,
    l2_weight: float = 0.01,
    jitter: int | None = None,
    flip: bool = False,
    init_std: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    silent: bool = True,
) -> InversionResult:
    """Optimise M images from noise so that their embeddings point along ``targets``.

    Parameters
    ----------
    backbone : nn.Module
        Maps (B, 3, S, S) in [-1, 1] to (B, D); must hold BatchNorm2d layers when
        ``bn_weight > 0``. It is used frozen in eval mode; its mode, gradient flags and
        device are restored afterwards.
    targets : array-like of shape (M, D)
        Target vectors (normalised here; any non-zero length). All M are optimised as
        one batch, so the BN prior constrains their joint statistics.
    size : int
        Image side S (the backbone's input size).
    steps : int
        Adam steps.
    lr : float
        Initial Adam learning rate on the tanh-space pixels (cosine decay to 0).
    bn_weight, cos_weight, tv_weight, l2_weight : float
        Weights of the loss terms (see the module docstring: the embedding term's weight
        rises from ``cos_weight`` to ``COS_RAMP * cos_weight``); ``bn_weight=0`` turns the
        BN prior off (its value is still recorded).
    jitter : int, optional
        Largest random shift per step, in pixels (0: none; default ``max(1, size // 32)``).
    flip : bool
        Mirror the batch left-right at random each step (off by default: it costs
        cosine with networks whose embeddings are not mirror-invariant).
    init_std : float
        Standard deviation of the initial noise in tanh space.
    seed : int
        Seeds the initial noise, shifts and flips: on CPU the same call gives the same images.
    device : str or torch.device
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    silent : bool
        No progress bar.

    Returns
    -------
    InversionResult
    """
    t = _check_targets(targets)
    if jitter is None:
        jitter = max(1, size // 32)
    weights = {"bn_weight": float(bn_weight), "cos_weight": float(cos_weight), "tv_weight": float(tv_weight), "l2_weight": float(l2_weight)}
    _check_settings(size, steps, lr, weights, jitter, init_std)
    dev = resolve_device(device)
    settings: dict[str, Any] = {
        "size": size, "steps": steps, "lr": lr, **weights, "jitter": jitter, "flip": flip,
        "init_std": init_std, "seed": seed, "device": str(dev), "targets": int(t.shape[0]),
    }
    z, shifts, flips = _random_start(seed, t.shape[0], size, steps, init_std=init_std, jitter=jitter, flip=flip)
    z = z.to(dev).requires_grad_(True)
    has_bn = _has_bn_prior(backbone, bn_weight)
    loss_weights = _LossWeights(cos=cos_weight, bn=bn_weight, tv=tv_weight, l2=l2_weight)
    start = time.perf_counter()
    with frozen(backbone, dev), BNPrior(backbone) if has_bn else contextlib.nullcontext() as prior, make_progress(
        silent=silent, extra="cos {task.fields[cos]:.3f} bn {task.fields[bn]:.3g}"
    ) as progress:
        history = _optimise(backbone, prior, z, t.to(dev), shifts, flips, lr=lr, weights=loss_weights, progress=progress)
        seconds = time.perf_counter() - start
        images, final_cos, distance = _written_result(backbone, z, t, dev, has_bn=has_bn)
    return InversionResult(images=images, final_cos=final_cos, history=history, bn_distance=distance, seconds=seconds, settings=settings)


# -- the steps of invert ----------------------------------------------------------------------
@dataclass(frozen=True)
class _LossWeights:
    """The weights of the loss terms, as given to :func:`invert`."""

    cos: float
    bn: float
    tv: float
    l2: float


def _has_bn_prior(backbone: nn.Module, bn_weight: float) -> bool:
    """Whether ``backbone`` holds BatchNorm2d layers with running statistics; refused without them when ``bn_weight > 0``."""
    has_bn = bool(bn_layers(backbone))
    if not has_bn and bn_weight > 0:
        raise ConfigError(f"{type(backbone).__name__} has no BatchNorm2d layer with running statistics; use bn_weight=0 (--no-bn-prior)")
    return has_bn


def _random_start(seed: int, m: int, size: int, steps: int, *, init_std: float, jitter: int, flip: bool) -> tuple[torch.Tensor, list[list[int]] | None, list[bool]]:
    """Everything random of an inversion, drawn on the CPU from one generator seeded with ``seed``, in this order.

    Returns
    -------
    z : Tensor of shape (M, 3, S, S)
        The initial tanh-space pixels, normal with standard deviation ``init_std``.
    shifts : list of ``steps`` [dy, dx] in [-jitter, jitter], or None without jitter
    flips : list of ``steps`` bools (all False without ``flip``)
    """
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((m, 3, size, size), generator=gen) * init_std
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=gen).tolist() if jitter else None
    flips = (torch.rand(steps, generator=gen) < 0.5).tolist() if flip else [False] * steps
    return z, shifts, flips


def _optimise(
    backbone: nn.Module,
    prior: BNPrior | None,
    z: torch.Tensor,
    target: torch.Tensor,
    shifts: list[list[int]] | None,
    flips: list[bool],
    *,
    lr: float,
    weights: _LossWeights,
    progress: Any,
) -> dict[str, list[float]]:
    """Adam on ``z`` (in place) for ``len(flips)`` steps with a cosine-decayed learning rate; the history of the loss terms.

    Each step is shown on the ``progress`` bar with its mean cosine and R_bn.
    """
    steps = len(flips)
    task = progress.add_task(f"inverting {z.shape[0]} vectors", total=steps, cos=0.0, bn=0.0)
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    optimiser = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for i in range(steps):
        x = torch.tanh(z)
        view = _augmented(x, None if shifts is None else shifts[i], flips[i])
        terms = _loss_terms(backbone, prior, x, view, target)
        loss = _total_loss(terms, weights, i, steps)
        if not torch.isfinite(loss):
            raise TrainingError(f"inversion loss became {float(loss)} at step {i}; lower the learning rate")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        cos, bn, tv, l2 = terms
        for key, value in zip(HISTORY_KEYS, (loss, cos.mean(), bn, tv, l2)):
            history[key].append(float(value.detach()))
        progress.update(task, advance=1, cos=history["cos"][-1], bn=history["bn"][-1])
    return history


def _augmented(x: torch.Tensor, shift: list[int] | None, flipped: bool) -> torch.Tensor:
    """The batch as the backbone sees it this step: rolled circularly by ``shift`` (dy, dx), mirrored when ``flipped``."""
    view = torch.roll(x, shifts=tuple(shift), dims=(2, 3)) if shift is not None else x
    if flipped:
        view = view.flip(3)
    return view


def _loss_terms(backbone: nn.Module, prior: BNPrior | None, x: torch.Tensor, view: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-image cosines (M,) of ``view`` to ``target``, and R_bn (0 without a prior), TV and mean squared pixel of ``x``."""
    if prior is not None:
        prior.reset()
    emb = backbone(view)
    if emb.ndim != 2 or emb.shape[1] != target.shape[1]:
        raise ConfigError(f"the backbone gives embeddings of shape {tuple(emb.shape)} but the targets have D={target.shape[1]}")
    cos = (F.normalize(emb.float(), dim=1) * target).sum(dim=1)
    bn = prior.loss() if prior is not None else torch.zeros((), device=x.device)
    return cos, bn, _tv(x), x.pow(2).mean()


def _total_loss(terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], weights: _LossWeights, i: int, steps: int) -> torch.Tensor:
    """The weighted loss of step ``i``, the embedding term's weight ramped up to ``COS_RAMP`` times (module docstring)."""
    cos, bn, tv, l2 = terms
    ramp = 1.0 + (COS_RAMP - 1.0) * i / max(1, steps - 1)
    return weights.cos * ramp * (1 - cos).mean() + weights.bn * bn + weights.tv * tv + weights.l2 * l2


def _written_result(backbone: nn.Module, z: torch.Tensor, t: torch.Tensor, dev: torch.device, *, has_bn: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """The uint8 images of ``z``, their embeddings' cosines to the targets ``t`` (M,) and their R_bn (NaN without BatchNorm)."""
    with torch.no_grad():
        images = to_uint8(torch.tanh(z))
    final = embed_images(backbone, images, device=dev)
    distance = bn_distance(backbone, images, device=dev) if has_bn else float("nan")
    final_cos = (final * t.numpy()).sum(axis=1).astype(np.float32)
    return images, final_cos, distance
