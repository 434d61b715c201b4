"""ElasticFace: a target margin drawn per sample and per step from N(m, sigma).

Boutros et al., "ElasticFace: Elastic Margin Loss for Deep Face Recognition" (CVPRW 2022).
- ``elastic-arc``: target logit ``s * cos(theta + m_i)``, m_i ~ N(0.5, 0.05), radians.
- ``elastic-cos``: target logit ``s * (cos(theta) - m_i)``, m_i ~ N(0.35, 0.05), cosine units.
- ``+`` variants (sigma 0.0175 / 0.02): the batch's drawn margins are sorted and the
  largest go to the samples with the lowest target cosine (the hardest), the smallest
  to the easiest; the rank correlation between margin and target cosine is -1.

Margins are drawn only in training mode; in eval mode every sample gets the mean m.
They come from the global torch generator (the CUDA one on a GPU), so a run seeded the
same draws the same margins, and a resumed run, whose checkpoint restores the
generators, draws those of an uninterrupted one. Under a sharded head
(:class:`cleanface.losses.distributed.DistributedPartialFC`, which calls
:meth:`ElasticHead.share_draws`) the first rank of the group draws the margins of the
whole global batch and broadcasts them, so every rank assigns each sample the margin
one process seeded like the first rank would: the "+" ordering stays exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from cleanface.errors import ConfigError
from cleanface.losses._base import MarginHead, check_margin
from cleanface.losses._margin import combined_margin
from cleanface.losses._registry import register_head


def hardest_get_largest(margins: torch.Tensor, target_cos: torch.Tensor) -> torch.Tensor:
    """Reassign ``margins`` (B,) so that the i-th lowest target cosine gets the i-th largest margin."""
    order = torch.argsort(target_cos)  # hardest (lowest cosine) first
    assigned = torch.empty_like(margins)
    assigned[order] = torch.sort(margins, descending=True).values
    return assigned


class ElasticHead(MarginHead):
    """Shared ElasticFace machinery; ``angular`` picks cos(theta + m_i) or cos(theta) - m_i.

    Parameters
    ----------
    embedding_size, num_classes
        D and C.
    scale
        s (64).
    margin
        Mean margin m: radians for the angular heads, cosine units for the cosine heads.
    sigma
        Standard deviation of the drawn margins, in the units of ``margin``.
    sample_rate
        Partial FC sampling rate in (0, 1] (1.0: all classes).
    """

    angular: bool = True
    plus: bool = False

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.5, sigma: float = 0.05, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, sample_rate=sample_rate)
        unit = "radians" if self.angular else "cosine units"
        self.margin = check_margin(f"{type(self).__name__} margin ({unit})", margin, upper=1.6 if self.angular else 1.0)
        if not (isinstance(sigma, (int, float)) and 0.0 <= sigma <= 1.0):
            raise ConfigError(f"{type(self).__name__} sigma must be in [0, 1], got {sigma!r}")
        self.sigma = float(sigma)
        self.last_margins: torch.Tensor | None = None
        self._shared_draws = False
        self._draw_group: Any = None

    def share_draws(self, group: Any = None) -> None:
        """Use, on every rank of ``group`` (the default group when None), the margins its first rank draws.

        Each training step then costs one broadcast of B floats; every rank of the group
        must call the head in the same steps with the same batch size.
        """
        self._shared_draws, self._draw_group = True, group

    def _normal(self, target_cos: torch.Tensor) -> torch.Tensor:
        """B draws of N(margin, sigma), from the global generator or broadcast by the group's first rank."""
        if not self._shared_draws:
            return torch.normal(self.margin, self.sigma, size=target_cos.shape, device=target_cos.device)
        group = self._draw_group
        first = 0 if group is None else dist.get_global_rank(group, 0)
        if dist.get_rank() == first:
            margins = torch.normal(self.margin, self.sigma, size=target_cos.shape, device=target_cos.device)
        else:
            margins = torch.empty(target_cos.shape, device=target_cos.device)
        dist.broadcast(margins, src=first, group=group)
        return margins

    def draw_margins(self, target_cos: torch.Tensor) -> torch.Tensor:
        """Per-sample margins (B,) for this step (the mean margin in eval mode)."""
        if not self.training or self.sigma == 0.0:
            return torch.full_like(target_cos, self.margin)
        margins = self._normal(target_cos)
        if self.plus:
            margins = hardest_get_largest(margins, target_cos.detach())
        return margins

    def target_margin(self, target_cos: torch.Tensor) -> torch.Tensor:
        margins = self.draw_margins(target_cos)
        self.last_margins = margins.detach()
        if self.angular:
            return combined_margin(target_cos, 1.0, margins, 0.0)
        return combined_margin(target_cos, 1.0, 0.0, margins)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, sigma={self.sigma}"


@register_head("elastic-arc")
class ElasticArc(ElasticHead):
    """ElasticFace-Arc: ``s * cos(theta + m_i)``, m_i ~ N(0.5, 0.05) radians."""


@register_head("elastic-cos")
class ElasticCos(ElasticHead):
    """ElasticFace-Cos: ``s * (cos(theta) - m_i)``, m_i ~ N(0.35, 0.05) cosine units."""

    angular = False

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.35, sigma: float = 0.05, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, margin=margin, sigma=sigma, sample_rate=sample_rate)


@register_head("elastic-arc+")
class ElasticArcPlus(ElasticHead):
    """ElasticFace-Arc+: sorted margins, m_i ~ N(0.5, 0.0175) radians, largest to the hardest."""

    plus = True

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.5, sigma: float = 0.0175, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, margin=margin, sigma=sigma, sample_rate=sample_rate)


@register_head("elastic-cos+")
class ElasticCosPlus(ElasticHead):
    """ElasticFace-Cos+: sorted margins, m_i ~ N(0.35, 0.02) cosine units, largest to the hardest."""

    angular = False
    plus = True

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.35, sigma: float = 0.02, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, margin=margin, sigma=sigma, sample_rate=sample_rate)
