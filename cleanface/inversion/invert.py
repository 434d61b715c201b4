"""Synthesise images whose embeddings match target vectors, under image priors that make them look like faces.

Notation: M targets, D embedding size, S image side, T steps. The pixels of M images are
optimised jointly with Adam; step i (0-based) minimises

    loss_i = c_i * mean_m (1 - cos(f(A_i(x_m)), t_m))
           + bn_weight    * R_bn(A_i(x))          (see :mod:`cleanface.inversion.bn_prior`)
           + pixel_weight * R_pix(x)              (see :mod:`cleanface.inversion.image_prior`)
           + tv_weight    * TV(x) + l2_weight * mean(x^2)

    c_i = cos_weight * (1 + (COS_RAMP - 1) * i / (T - 1))        (c_0 = cos_weight when T = 1)

where f is the frozen backbone in eval mode (its BatchNorm running statistics are the
BN prior, taken over the batch of M images), TV the mean squared difference between
neighbouring pixels, and x = tanh(b + r) keeps the pixels in [-1, 1]: r are the optimised
pixels, b is 0, or with an image prior the average training face in tanh space (r then
starts at 0: the images start as the average face). The weight of the embedding term
rises linearly from ``cos_weight`` to ``COS_RAMP * cos_weight``: early on the priors shape
the images, at the end the targets dominate. The learning rate follows a cosine decay to 0.

A_i is step i's random view of the batch, so that the images cannot carry their identity
in pixel-exact patterns that the network reads but a person does not see: a circular shift
of up to ``jitter`` pixels, a mirror image (``flip``), a zoom by up to ``scale``. With
``levels`` > 1, r lives at a coarser resolution first (bilinearly upsampled), doubled at
equal shares of the steps; ``restarts`` > 1 probes several random starts and keeps each
image's best. ``bn_first`` weighs the first BatchNorm layer's term more.

What the defaults rest on (BENCHMARKS.md, "Faces from sub-centers"; an independent face
model, dlib's, judges the images of the dominant sub-centers of 40 LFW identities): from
noise, no combination of the BN prior (weights 0.002 to 0.05, first layer x10), jitter,
flips, zoom, TV and coarse-to-fine made a face that dlib's detector finds (0 of 40). From the
average face with a per-pixel prior (``pixel_weight`` 10), 40 of 40 are faces and 12 of 40
are identified as the right person among the 40 (chance: 1); there a larger BN weight (0.01)
costs faces, ``pixel_weight`` 30 identity, and TV, flips, coarse-to-fine and restarts add
nothing measurable, 600 steps nothing over 300. With an eigenface prior of 128 components
(``pixel_weight`` 1, no BN prior, which works against it), 17 of 40 are identified (15 of 40
on CelebA, chosen on LFW only). Without an image prior the defaults are those of the
data-free inversion: noise of ``init_std`` 0.5 and the BN prior at 0.002. On the BN weight:
R_bn is a sum of norms, whose gradient does not shrink as the statistics approach the
running ones, while that of 1 - cos vanishes at the target; a strong BN prior holds the
images at an angle from their targets without buying closer statistics.

The result is reported on what is written out: the images are rounded to uint8 and
embedded again (no shift, no flip) to give the final cosines.
"""

from __future__ import annotations

import contextlib
import inspect
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
from cleanface.inversion.image_prior import ImagePrior
from cleanface.progress import make_progress

#: the loss terms recorded per step in :attr:`InversionResult.history`
HISTORY_KEYS = ("loss", "cos", "bn", "tv", "l2", "pix")

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
    if not (init_std >= 0 and math.isfinite(init_std)):
        raise ConfigError(f"init_std must be 0 or more, got {init_std}")


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
    lr: float = 0.05,
    bn_weight: float | None = None,
    cos_weight: float = 1.0,
    tv_weight: float = 0.05,
    l2_weight: float = 0.01,
    jitter: int | None = None,
    flip: bool = False,
    scale: float = 0.05,
    bn_first: float = 1.0,
    levels: int = 1,
    restarts: int = 1,
    image_prior: ImagePrior | None = None,
    pixel_weight: float | None = None,
    init_std: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    silent: bool = True,
) -> InversionResult:
    """Optimise M images (from noise, or from the average face of ``image_prior``) so that their embeddings point along ``targets``.

    Parameters
    ----------
    backbone : nn.Module
        Maps (B, 3, S, S) in [-1, 1] to (B, D); must hold BatchNorm2d layers when ``bn_weight > 0``.
        Used frozen in eval mode; its mode, gradient flags and device are restored afterwards.
    targets : array-like of shape (M, D)
        Target vectors (normalised here). All M are optimised as one batch: the BN prior
        constrains their joint statistics.
    size, steps, lr : int, int, float
        Image side S (the backbone's input size); Adam steps; initial learning rate (cosine decay to 0).
    bn_weight, cos_weight, tv_weight, l2_weight, pixel_weight : float
        Weights of the loss terms (module docstring); ``bn_weight=0`` turns the BN prior off
        (R_bn is still recorded; default 0 with an eigenface prior, else 0.002); ``pixel_weight``
        applies with an ``image_prior`` only (default 1 for an eigenface prior, 10 for a per-pixel one).
    jitter, flip, scale : int or None, bool, float
        Each step's random view: a circular shift of up to ``jitter`` pixels (default
        ``max(1, size // 16)``), a mirror image at random (off: it costs cosine with networks
        whose embeddings are not mirror-invariant), a zoom by a factor in ``[1 - scale, 1 + scale]``.
    bn_first : float
        Multiplier of the first BatchNorm layer's term of the BN prior; 1: all layers alike.
    levels, restarts : int
        Coarse-to-fine levels (the pixels start at ``size / 2**(levels - 1)``, doubled at equal
        shares of the steps); random starts per image (each optimised a tenth of the steps,
        the best kept).
    image_prior : ImagePrior, optional
        Statistics of training images (:mod:`cleanface.inversion.image_prior`): the images start
        from their average face; the optimised values are a residual added in tanh space or,
        for an eigenface prior, the eigenface coefficients (then ``levels`` must be 1).
    init_std : float, optional
        Initial noise in tanh space (of the residual with an image prior); default 0 with an
        image prior, else 0.5.
    seed, device, silent
        Seeds every random draw (on CPU the same call gives the same images); ``cpu``,
        ``cuda``, ``cuda:N`` or ``auto``; no progress bar.

    Returns
    -------
    InversionResult
    """
    t = _check_targets(targets)
    dev = resolve_device(device)
    settings = _resolved_settings(
        size=size, steps=steps, lr=lr, bn_weight=bn_weight, cos_weight=cos_weight, tv_weight=tv_weight, l2_weight=l2_weight, jitter=jitter,
        flip=flip, scale=scale, bn_first=bn_first, levels=levels, restarts=restarts, image_prior=image_prior, pixel_weight=pixel_weight,
        init_std=init_std,
    )
    settings.update({"seed": seed, "device": str(dev), "targets": int(t.shape[0])})
    plan = _random_plan(seed, t.shape[0], size, steps, init_std=settings["init_std"], jitter=settings["jitter"], flip=flip, scale=scale,
                        levels=levels, restarts=restarts, image_prior=image_prior, device=dev)
    has_bn = _has_bn_prior(backbone, settings["bn_weight"])
    loss_weights = _LossWeights(cos=cos_weight, bn=settings["bn_weight"], tv=tv_weight, l2=l2_weight, bn_first=bn_first, pix=settings["pixel_weight"])
    return _run(backbone, plan, t, dev, has_bn=has_bn, lr=lr, weights=loss_weights, size=size, silent=silent, settings=settings)


# -- the steps of invert ----------------------------------------------------------------------
def _run(backbone: nn.Module, plan: "_Plan", t: torch.Tensor, dev: torch.device, *, has_bn: bool, lr: float, weights: "_LossWeights",
         size: int, silent: bool, settings: dict[str, Any]) -> InversionResult:
    """The optimisation of a checked :func:`invert` call, and its written result."""
    start = time.perf_counter()
    with frozen(backbone, dev), BNPrior(backbone) if has_bn else contextlib.nullcontext() as prior, make_progress(
        silent=silent, extra="cos {task.fields[cos]:.3f} bn {task.fields[bn]:.3g}"
    ) as progress:
        z = _best_start(backbone, prior, plan, t.to(dev), dev, lr=lr, weights=weights, size=size, steps=plan.ends[-1])
        z, history = _optimise(backbone, prior, z, t.to(dev), plan, lr=lr, weights=weights, size=size, progress=progress)
        seconds = time.perf_counter() - start
        images, final_cos, distance = _written_result(backbone, _render(z, size, plan), t, dev, has_bn=has_bn)
    return InversionResult(images=images, final_cos=final_cos, history=history, bn_distance=distance, seconds=seconds, settings=settings)


@dataclass(frozen=True)
class _LossWeights:
    """The weights of the loss terms, as given to :func:`invert`."""

    cos: float
    bn: float
    tv: float
    l2: float
    bn_first: float = 1.0
    pix: float = 0.0


@dataclass(frozen=True)
class _Terms:
    """The loss terms of one step: per-image cosines (M,), R_bn, its first layer's term, TV and mean squared pixel."""

    cos: torch.Tensor
    bn: torch.Tensor
    bn0: torch.Tensor
    tv: torch.Tensor
    l2: torch.Tensor
    pix: torch.Tensor


@dataclass
class _Plan:
    """Everything random of an inversion, and its resolution schedule.

    Attributes
    ----------
    starts : list of Tensor of shape (M, 3, r, r)
        One initial tanh-space image batch per restart, at the first level's side r.
    shifts : list of ``steps`` [dy, dx] in [-jitter, jitter], or None without jitter
    flips : list of ``steps`` bools (all False without ``flip``)
    zooms : list of ``steps`` factors in [1 - scale, 1 + scale], or None without ``scale``
    sides : list of int
        The pixel side of each resolution level, coarse to fine (the last is ``size``).
    ends : list of int
        The step at which each level ends (exclusive); the last is ``steps``.
    pixels : ImagePrior or None
        The image prior at the backbone's input size.
    base : Tensor of shape (1, 3, S, S) or None
        The average face in tanh space that the optimised residual is added to.
    """

    starts: list[torch.Tensor]
    shifts: list[list[int]] | None
    flips: list[bool]
    zooms: list[float] | None
    sides: list[int]
    ends: list[int]
    pixels: ImagePrior | None = None
    base: torch.Tensor | None = None


def _check_schedule(size: int, steps: int, *, scale: float, bn_first: float, levels: int, restarts: int) -> None:
    if not (0 <= scale < 0.5 and math.isfinite(scale)):
        raise ConfigError(f"scale must be at least 0 and below 0.5, got {scale}")
    if not (bn_first >= 0 and math.isfinite(bn_first)):
        raise ConfigError(f"bn_first must be 0 or more, got {bn_first}")
    if levels < 1 or size // 2 ** (levels - 1) < 4:
        raise ConfigError(f"levels must be at least 1 and leave at least 4 pixels at the coarsest level ({size} // 2**(levels - 1)), got {levels}")
    if levels > steps:
        raise ConfigError(f"levels ({levels}) cannot exceed steps ({steps})")
    if restarts < 1:
        raise ConfigError(f"restarts must be at least 1, got {restarts}")


def _resolved_settings(*, size: int, steps: int, lr: float, jitter: int | None, init_std: float | None, image_prior: ImagePrior | None,
                       pixel_weight: float | None, **kw: Any) -> dict[str, Any]:
    """The settings of :func:`invert`, checked, with the defaults that depend on others resolved (JSON-ready)."""
    jitter = max(1, size // 16) if jitter is None else jitter
    rank = 0 if image_prior is None else image_prior.rank
    if pixel_weight is None:
        pixel_weight = 1.0 if rank else 10.0
    if kw["bn_weight"] is None:  # the BN prior pulls eigenface mixes away from faces (BENCHMARKS.md)
        kw["bn_weight"] = 0.0 if rank else 0.002
    if rank and kw["levels"] != 1:
        raise ConfigError(f"an eigenface prior optimises its coefficients, not pixels: levels must be 1, got {kw['levels']}")
    init_std = (0.0 if image_prior is not None else 0.5) if init_std is None else init_std
    weights = {k: float(kw[k]) for k in ("bn_weight", "cos_weight", "tv_weight", "l2_weight")}
    _check_settings(size, steps, lr, weights, jitter, init_std)
    _check_schedule(size, steps, scale=kw["scale"], bn_first=kw["bn_first"], levels=kw["levels"], restarts=kw["restarts"])
    if not (pixel_weight >= 0 and math.isfinite(pixel_weight)):
        raise ConfigError(f"pixel_weight must be 0 or more, got {pixel_weight}")
    return {
        "size": size, "steps": steps, "lr": lr, **weights, "jitter": jitter, "flip": kw["flip"], "scale": kw["scale"],
        "bn_first": kw["bn_first"], "levels": kw["levels"], "restarts": kw["restarts"],
        "pixel_weight": float(pixel_weight) if image_prior is not None else 0.0,
        "image_prior": None if image_prior is None else {"images": image_prior.images, "size": image_prior.size, "components": rank},
        "init_std": init_std,
    }


def _has_bn_prior(backbone: nn.Module, bn_weight: float) -> bool:
    """Whether ``backbone`` holds BatchNorm2d layers with running statistics; refused without them when ``bn_weight > 0``."""
    has_bn = bool(bn_layers(backbone))
    if not has_bn and bn_weight > 0:
        raise ConfigError(f"{type(backbone).__name__} has no BatchNorm2d layer with running statistics; use bn_weight=0 (--no-bn-prior)")
    return has_bn


def _random_plan(
    seed: int, m: int, size: int, steps: int, *, init_std: float, jitter: int, flip: bool, scale: float, levels: int, restarts: int,
    image_prior: ImagePrior | None = None, device: torch.device | None = None,
) -> _Plan:
    """The :class:`_Plan`, drawn on the CPU from one generator seeded with ``seed``: the first start, the shifts,
    the flips, the zooms, then the other starts (so that adding a regulariser leaves the earlier draws as they were);
    with ``image_prior``, its average face at ``size`` on ``device`` as the base."""
    gen = torch.Generator().manual_seed(int(seed))
    sides = [size // 2 ** (levels - 1 - level) for level in range(levels)]
    starts = [torch.randn((m, 3, sides[0], sides[0]), generator=gen) * init_std]
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=gen).tolist() if jitter else None
    flips = (torch.rand(steps, generator=gen) < 0.5).tolist() if flip else [False] * steps
    zooms = (1 + scale * (2 * torch.rand(steps, generator=gen, dtype=torch.float64) - 1)).tolist() if scale else None
    starts += [torch.randn((m, 3, sides[0], sides[0]), generator=gen) * init_std for _ in range(restarts - 1)]
    ends = [round(steps * (level + 1) / levels) for level in range(levels)]
    pixels = None if image_prior is None else image_prior.at(size)
    if pixels is not None and pixels.rank:  # the coefficients are optimised: redraw the starts in their space, from the same stream
        starts = [s.flatten(1)[:, : pixels.rank] for s in starts]  # k <= 3 * size**2: the components span the pixels at most
        return _Plan(starts, shifts, flips, zooms, sides, ends, pixels, None)
    base = None if pixels is None else pixels.base().to(device or "cpu")
    return _Plan(starts, shifts, flips, zooms, sides, ends, pixels, base)


def _render(z: torch.Tensor, size: int, plan: "_Plan") -> torch.Tensor:
    """The (M, 3, size, size) image in [-1, 1] of tanh-space pixels ``z`` at any side (bilinear upsampling first),
    added to the plan's tanh-space base image when it has one; of eigenface coefficients ``z`` (M, k) with an eigenface prior."""
    if plan.pixels is not None and plan.pixels.rank:
        return torch.tanh(plan.pixels.decode(z))
    if z.shape[-1] != size:
        z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
    return torch.tanh(z if plan.base is None else z + plan.base)


def _augmented(x: torch.Tensor, plan: _Plan, i: int) -> torch.Tensor:
    """The batch as the backbone sees it at step ``i``: rolled circularly by the step's shift, mirrored, zoomed."""
    view = torch.roll(x, shifts=tuple(plan.shifts[i]), dims=(2, 3)) if plan.shifts is not None else x
    if plan.flips[i]:
        view = view.flip(3)
    if plan.zooms is not None and plan.zooms[i] != 1.0:
        theta = torch.zeros((x.shape[0], 2, 3), dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / plan.zooms[i]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        view = F.grid_sample(view, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return view


def _tv_each(x: torch.Tensor) -> torch.Tensor:
    """Per image (M,): mean squared difference between vertical neighbours plus that between horizontal ones."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(dim=1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(dim=1)
    return dy + dx


def _loss_terms(
    backbone: nn.Module, prior: BNPrior | None, x: torch.Tensor, view: torch.Tensor, target: torch.Tensor, pixels: ImagePrior | None = None,
    z: torch.Tensor | None = None,
) -> _Terms:
    """The loss terms of image batch ``x`` seen as ``view`` (R_bn 0 without a BN prior, R_pix 0 without an image prior)."""
    if prior is not None:
        prior.reset()
    emb = backbone(view)
    if emb.ndim != 2 or emb.shape[1] != target.shape[1]:
        raise ConfigError(f"the backbone gives embeddings of shape {tuple(emb.shape)} but the targets have D={target.shape[1]}")
    cos = (F.normalize(emb.float(), dim=1) * target).sum(dim=1)
    zero = torch.zeros((), device=x.device)
    bn, bn0 = (prior.loss(), prior.terms[0]) if prior is not None else (zero, zero)
    pix = pixels.loss(x, z) if pixels is not None else zero
    return _Terms(cos, bn, bn0, _tv_each(x).mean(), x.pow(2).mean(), pix)


def _total_loss(terms: _Terms, weights: _LossWeights, i: int, steps: int) -> torch.Tensor:
    """The weighted loss of step ``i``, the embedding term's weight ramped up to ``COS_RAMP`` times (module docstring)."""
    ramp = 1.0 + (COS_RAMP - 1.0) * i / max(1, steps - 1)
    bn = terms.bn + (weights.bn_first - 1.0) * terms.bn0
    return (weights.cos * ramp * (1 - terms.cos).mean() + weights.bn * bn + weights.tv * terms.tv + weights.l2 * terms.l2
            + weights.pix * terms.pix)


def _best_start(
    backbone: nn.Module, prior: BNPrior | None, plan: _Plan, target: torch.Tensor, dev: torch.device, *, lr: float, weights: _LossWeights,
    size: int, steps: int,
) -> torch.Tensor:
    """The start each image runs the schedule from: the only one, or of ``len(plan.starts)`` starts optimised for a tenth
    of the steps (at the first level, with the schedule's first augmentations), the one whose image has the lowest
    loss (embedding, TV and L2 terms of that image, unaugmented), as it is after those steps."""
    if len(plan.starts) == 1:
        return plan.starts[0].to(dev)
    probe = _Plan(plan.starts, plan.shifts, plan.flips, plan.zooms, plan.sides[:1], [max(1, steps // 10)], plan.pixels, plan.base)
    best_z, best_loss = None, None
    for start in plan.starts:
        z, _ = _optimise(backbone, prior, start.to(dev), target, probe, lr=lr, weights=weights, size=size, progress=None, total=steps)
        with torch.no_grad():
            x = _render(z, size, plan)
            if prior is not None:
                prior.reset()
            cos = (F.normalize(backbone(x).float(), dim=1) * target).sum(dim=1)
            loss = weights.cos * (1 - cos) + weights.tv * _tv_each(x) + weights.l2 * x.pow(2).flatten(1).mean(dim=1)
            if plan.pixels is not None and weights.pix:
                loss = loss + weights.pix * plan.pixels.loss_each(x, z)
        if best_z is None:
            best_z, best_loss = z.detach().clone(), loss
        else:
            better = loss < best_loss
            best_z[better], best_loss = z.detach()[better], torch.minimum(loss, best_loss)
    return best_z


def _optimise(
    backbone: nn.Module,
    prior: BNPrior | None,
    z: torch.Tensor,
    target: torch.Tensor,
    plan: _Plan,
    *,
    lr: float,
    weights: _LossWeights,
    size: int,
    progress: Any,
    total: int | None = None,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Adam on the tanh-space pixels for ``plan.ends[-1]`` steps, level by level; the final pixels and the loss history.

    At each new level the pixels are upsampled bilinearly to the level's side and Adam starts afresh. The learning
    rate follows a cosine decay over ``total`` steps (default: the plan's). Each step is shown on the ``progress``
    bar (none: nothing shown) with its mean cosine and R_bn.
    """
    steps = plan.ends[-1]
    total = total or steps
    task = progress.add_task(f"inverting {z.shape[0]} vectors", total=steps, cos=0.0, bn=0.0) if progress is not None else None
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    for level, (side, end) in enumerate(zip(plan.sides, plan.ends)):
        if z.ndim == 4 and z.shape[-1] != side:
            z = F.interpolate(z.detach(), size=(side, side), mode="bilinear", align_corners=False)
        z = z.detach().clone().requires_grad_(True)  # never the caller's tensor: Adam steps in place
        optimiser = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
        for i in range(plan.ends[level - 1] if level else 0, end):
            optimiser.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / total))
            x = _render(z, size, plan)
            terms = _loss_terms(backbone, prior, x, _augmented(x, plan, i), target, plan.pixels, z)
            loss = _total_loss(terms, weights, i, total)
            if not torch.isfinite(loss):
                raise TrainingError(f"inversion loss became {float(loss)} at step {i}; lower the learning rate")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for key, value in zip(HISTORY_KEYS, (loss, terms.cos.mean(), terms.bn, terms.tv, terms.l2, terms.pix)):
                history[key].append(float(value.detach()))
            if task is not None:
                progress.update(task, advance=1, cos=history["cos"][-1], bn=history["bn"][-1])
    return z.detach(), history


def _written_result(backbone: nn.Module, x: torch.Tensor, t: torch.Tensor, dev: torch.device, *, has_bn: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """The uint8 images of ``x`` (in [-1, 1]), their embeddings' cosines to the targets ``t`` (M,) and their R_bn (NaN without BatchNorm)."""
    with torch.no_grad():
        images = to_uint8(x)
    final = embed_images(backbone, images, device=dev)
    distance = bn_distance(backbone, images, device=dev) if has_bn else float("nan")
    final_cos = (final * t.numpy()).sum(axis=1).astype(np.float32)
    return images, final_cos, distance


#: the keyword defaults of :func:`invert`, for front ends that show them
DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(invert).parameters.items() if p.default is not inspect.Parameter.empty
}
