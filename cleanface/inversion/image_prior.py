"""The image prior: where a face's pixels usually are, from the training images' per-pixel statistics.

The BatchNorm prior (:mod:`cleanface.inversion.bn_prior`) matches statistics pooled over
positions: it knows what local patterns look like, not where they go, and a small network
trained on a few thousand faces satisfies it with colourful textures. The image prior adds
the one thing an aligned face set shares everywhere: for every pixel position p and colour
channel c, the mean mu[c, p] and standard deviation sigma[c, p] of the training images
(identity-free: an average over many people). With it the optimisation

* starts from the average face: x = tanh(atanh(mu) + r), the residual r starting near 0
  (noise of ``init_std``), so that it only has to add what makes the target's identity;
* pays R_pix = mean_{c,p} ((x[c, p] - mu[c, p]) / sigma[c, p])^2 for straying from it
  (a Gaussian log-density up to constants), weighted by ``pixel_weight`` in
  :func:`cleanface.inversion.invert`.

With ``components`` = k > 0 the prior is an eigenface model instead: the images are
z = m + sum_j c_j s_j u_j in tanh space, m the mean of the training images' tanh-space
pre-images, u_j their first k principal components and s_j the standard deviations along
them; only the coefficients c are optimised (from 0: the mean face), and the prior pays
R_pix = mean_j c_j^2 (a Gaussian log-density in the components' space, up to constants).
Every image is then a mix of the ways training faces differ from each other: it keeps eyes,
mouth and hair where faces have them while the coefficients move it towards the target.

The statistics come from images, so unlike the BN prior they need the data (or a sample of
it) at inversion time; ``cleanface invert`` reads a sample of the run's training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cleanface.errors import ConfigError

#: smallest per-pixel standard deviation, in [-1, 1] pixel units (keeps the prior finite on constant pixels)
MIN_STD = 0.05

#: the average face is kept inside tanh's range so that its pre-image is finite
MAX_ABS = 0.98


@dataclass(frozen=True)
class ImagePrior:
    """Per-pixel mean and standard deviation of the training images, (3, S, S) float32 in [-1, 1] pixel units,
    and with ``components`` their eigenface model in tanh space (``center`` (3, S, S), ``components`` (k, 3*S*S)
    orthonormal rows, ``scales`` (k,))."""

    mean: torch.Tensor
    std: torch.Tensor
    images: int
    center: torch.Tensor | None = None
    components: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        """k, the number of eigenfaces (0: the per-pixel prior)."""
        return 0 if self.components is None else int(self.components.shape[0])

    @classmethod
    def from_images(cls, images: np.ndarray, components: int = 0) -> "ImagePrior":
        """The prior of uint8 RGB images (N, S, S, 3), N >= 2; ``components`` > 0 adds the eigenface model (at most N - 1)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ConfigError(f"the image prior needs square RGB images of shape (N, S, S, 3), got {images.shape}")
        if len(images) < 2:
            raise ConfigError(f"the image prior needs at least 2 images, got {len(images)}")
        if components < 0:
            raise ConfigError(f"components must be 0 or more, got {components}")
        x = images.astype(np.float64) / 127.5 - 1.0
        mean = torch.as_tensor(x.mean(axis=0).transpose(2, 0, 1), dtype=torch.float32)
        std = torch.as_tensor(x.std(axis=0).transpose(2, 0, 1), dtype=torch.float32).clamp_min(MIN_STD)
        if not components:
            return cls(mean, std, int(len(images)))
        z = torch.atanh(torch.as_tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32).clamp(-MAX_ABS, MAX_ABS)).flatten(1)
        center = z.mean(dim=0)
        _, sv, vh = torch.linalg.svd(z - center, full_matrices=False)
        k = min(int(components), len(images) - 1)
        scales = sv[:k] / math.sqrt(len(images) - 1)
        return cls(mean, std, int(len(images)), center.view(3, *mean.shape[1:]), vh[:k].contiguous(), scales)

    @property
    def size(self) -> int:
        return int(self.mean.shape[-1])

    def at(self, size: int) -> "ImagePrior":
        """The prior resampled to ``size`` pixels (bilinear), for a backbone of another input size (per-pixel priors only)."""
        if size == self.size:
            return self
        if self.rank:
            raise ConfigError(f"the eigenface prior was built at {self.size} pixels; build it from images at {size} for this backbone")
        resample = lambda t: F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]  # noqa: E731
        return ImagePrior(resample(self.mean), resample(self.std).clamp_min(MIN_STD), self.images)

    def base(self) -> torch.Tensor:
        """The average face in tanh space, (1, 3, S, S): ``atanh(mu)``, mu clipped to +-``MAX_ABS``."""
        return torch.atanh(self.mean.clamp(-MAX_ABS, MAX_ABS))[None]

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The tanh-space images (M, 3, S, S) of eigenface coefficients (M, k)."""
        comp, scales, center = (t.to(coefficients.device) for t in (self.components, self.scales, self.center))
        return center + ((coefficients * scales) @ comp).view(-1, *center.shape)

    def loss_each(self, x: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """R_pix per image (M,): of images (M, 3, S, S) in [-1, 1], the mean squared standardised distance to the average
        face; with an eigenface model, the mean squared ``coefficients`` (M, k) that made them."""
        if self.rank:
            if coefficients is None:
                raise ConfigError("an eigenface prior measures the coefficients of its images: pass them")
            return coefficients.pow(2).mean(dim=1)
        return ((x - self.mean.to(x.device)) / self.std.to(x.device)).pow(2).flatten(1).mean(dim=1)

    def loss(self, x: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """R_pix of the batch: the mean of :meth:`loss_each` (every image has as many pixels and coefficients)."""
        return self.loss_each(x, coefficients).mean()
