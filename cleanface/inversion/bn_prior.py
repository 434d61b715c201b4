"""The BatchNorm prior: how far a batch's feature statistics are from a trained network's.

A network trained with BatchNorm keeps, in every ``nn.BatchNorm2d`` layer, running
estimates of the per-channel mean and variance of that layer's input over the training
images. A batch of images that looks like the training data produces inputs with
matching statistics; noise or adversarial patterns do not. For every BatchNorm2d layer
l with running statistics, let mu_l and var_l be the per-channel mean and (biased)
variance of its input over the batch and the spatial positions; the prior is

    R_bn = sum_l ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2

:class:`BNPrior` collects the terms with forward hooks while the network runs in eval
mode (so the running statistics are used, never updated); :func:`bn_distance` measures
a finished batch of images with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cleanface.errors import ConfigError


def bn_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The ``(name, layer)`` pairs of every ``nn.BatchNorm2d`` of ``model`` that tracks running statistics."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_mean is not None
    ]


class BNPrior:
    """Forward hooks that measure, at every BatchNorm2d, the distance of the batch statistics to the running ones.

    Use as a context manager around forward passes of ``model``; after each pass,
    :meth:`loss` is the differentiable sum ``R_bn`` over the layers reached and
    :attr:`terms` holds one scalar tensor per layer (in forward order). Hooks are
    removed on exit. The model should be in eval mode: in train mode BatchNorm would
    normalise with (and update its running statistics from) the batch itself.

    Parameters
    ----------
    model : nn.Module
        Must hold at least one BatchNorm2d layer with running statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        if not self.layers:
            raise ConfigError(f"{type(model).__name__} has no BatchNorm2d layer with running statistics: the BN prior needs one")
        self.terms: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "BNPrior":
        self.terms = []
        self._handles = [layer.register_forward_hook(self._hook) for _, layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        channels = x.shape[1]
        flat = x.transpose(0, 1).reshape(channels, -1).float()
        mean = flat.mean(dim=1)
        var = flat.var(dim=1, unbiased=False)
        rm = module.running_mean.float()
        rv = module.running_var.float()
        self.terms.append(torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv))

    def reset(self) -> None:
        """Forget the terms of the previous forward pass (call before each pass)."""
        self.terms = []

    def loss(self, first: float = 1.0) -> torch.Tensor:
        """``R_bn`` of the last forward pass: the sum of :attr:`terms` (a 0-d tensor), the first layer's term times ``first``.

        The first BatchNorm layer sees the statistics of the pixels' first filters (colour,
        edges, local contrast); weighting it more (``first`` > 1) pulls those towards the
        training images' before the deeper, more abstract statistics.
        """
        if not self.terms:
            raise RuntimeError("no BatchNorm2d layer ran since the last reset(); run a forward pass inside the BNPrior context")
        total = torch.stack(self.terms).sum()
        return total if first == 1.0 else total + (first - 1.0) * self.terms[0]


@torch.no_grad()
def bn_distance(backbone: nn.Module, images: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu") -> float:
    """``R_bn`` of a batch of images under ``backbone``'s running statistics (lower: closer to the training data).

    Parameters
    ----------
    backbone : nn.Module
        Put in eval mode for the measurement; its mode is restored afterwards.
    images : ndarray of shape (B, S, S, 3) uint8, or Tensor of shape (B, 3, S, S) float in [-1, 1]
    device : str or torch.device

    Returns
    -------
    float
    """
    if isinstance(images, np.ndarray):
        from cleanface.data.images import to_tensor_batch

        images = to_tensor_batch(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must have shape (B, 3, S, S) or (B, S, S, 3), got {tuple(images.shape)}")
    was_training = backbone.training
    backbone.eval()
    try:
        with BNPrior(backbone) as prior:
            backbone(images.to(device))
            return float(prior.loss())
    finally:
        backbone.train(was_training)
