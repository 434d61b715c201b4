"""ArcFace and CosFace: fixed additive margins in angle or in cosine.

- ArcFace (Deng et al., CVPR 2019): target logit ``s * cos(theta + m)``, m in radians.
- CosFace (Wang et al., CVPR 2018): target logit ``s * (cos(theta) - m)``, m in cosine units.
Both are the combined margin ``cos(m1 * theta + m2) - m3`` of :mod:`cleanface.losses._margin`.
"""

from __future__ import annotations

import torch

from cleanface.losses._base import MarginHead, check_margin
from cleanface.losses._margin import combined_margin
from cleanface.losses._registry import register_head


class CombinedMarginHead(MarginHead):
    """Head with the fixed combined margin ``cos(m1 * theta + m2) - m3`` on the target."""

    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0

    def target_margin(self, target_cos: torch.Tensor) -> torch.Tensor:
        return combined_margin(target_cos, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


@register_head("arcface")
class ArcFace(CombinedMarginHead):
    """ArcFace: target logit ``s * cos(theta + margin)``.

    Parameters
    ----------
    embedding_size, num_classes
        D and C.
    scale
        s (64).
    margin
        Additive angular margin in radians (0.5, about 28.6 degrees).
    sample_rate
        Partial FC sampling rate in (0, 1] (1.0: all classes).
    """

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.5, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, sample_rate=sample_rate)
        self.m2 = check_margin("arcface margin (radians)", margin)


@register_head("cosface")
class CosFace(CombinedMarginHead):
    """CosFace: target logit ``s * (cos(theta) - margin)``.

    Parameters
    ----------
    embedding_size, num_classes
        D and C.
    scale
        s (64).
    margin
        Additive cosine margin, in cosine units (0.35).
    sample_rate
        Partial FC sampling rate in (0, 1] (1.0: all classes).
    """

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, margin: float = 0.35, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, sample_rate=sample_rate)
        self.m3 = check_margin("cosface margin (cosine units)", margin, upper=1.0)
