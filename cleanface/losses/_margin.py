"""The combined angular margin shared by ArcFace, CosFace and ElasticFace.

For a target cosine ``cos(theta)`` the combined margin gives ``cos(m1 * theta + m2) - m3``:
ArcFace is ``(1, m, 0)``, CosFace ``(1, 0, m)``, SphereFace-style margins use ``m1``.
Angles and ``m2`` are in radians; ``m3`` is in cosine units.
"""

from __future__ import annotations

import math

import torch

Margin = float | torch.Tensor


def combined_margin(cos: torch.Tensor, m1: float = 1.0, m2: Margin = 0.0, m3: Margin = 0.0, *, eps: float = 1e-6) -> torch.Tensor:
    """Target cosine with the combined margin, ``cos(m1 * theta + m2) - m3``.

    Parameters
    ----------
    cos
        Target cosines, shape (B,), float32.
    m1
        Multiplicative angular margin (1.0: none).
    m2
        Additive angular margin in radians: a float or a per-sample tensor (B,).
    m3
        Additive cosine margin: a float or a per-sample tensor (B,).
    eps
        The cosine is clamped to ``[-1 + eps, 1 - eps]`` before ``acos``, so the gradient
        stays finite when an embedding equals its class weight (or its opposite).

    Returns
    -------
    torch.Tensor
        Shape (B,). Where ``m1 * theta + m2`` would pass pi, the cosine of the shifted
        angle would rise again and reward moving away from the class; there the value
        falls back to ``cos(theta) - m2 * sin(m2) - m3`` (the rule of the insightface
        recipe and of pytorch-metric-learning). For ``m1 = 1`` the result is then
        non-increasing in theta over the whole of [0, pi]: the fallback starts below -1
        exactly where the margin curve reaches -1.
    """
    pure_cosine = m1 == 1.0 and not isinstance(m2, torch.Tensor) and m2 == 0.0
    if pure_cosine:  # CosFace: no angle needed, exact and cheap
        return cos - m3
    theta = torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))
    shifted = m1 * theta + m2
    m2_t = torch.as_tensor(m2, dtype=cos.dtype, device=cos.device)
    fallback = cos - m2_t * torch.sin(m2_t)
    return torch.where(shifted <= math.pi, torch.cos(shifted), fallback) - m3
