"""Sub-center ArcFace: K weight vectors per class, the class cosine is their maximum.

Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
Faces" (ECCV 2020). Noisy samples gather around non-dominant sub-centers instead of
pulling the class's main center, which later lets purification find them. The ArcFace
margin is applied after pooling, to the target class only.
"""

from __future__ import annotations

from cleanface.losses._base import check_margin
from cleanface.losses._registry import register_head
from cleanface.losses.arcface import CombinedMarginHead


@register_head("subcenter-arcface")
class SubCenterArcFace(CombinedMarginHead):
    """Sub-center ArcFace: class cosine ``max_k cos(x, W[c, k])``, target logit ``s * cos(theta + margin)``.

    Parameters
    ----------
    embedding_size, num_classes
        D and C.
    k
        Sub-centers per class (3; K=1 is plain ArcFace).
    scale
        s (64).
    margin
        Additive angular margin in radians (0.5).
    sample_rate
        Partial FC sampling rate in (0, 1] (1.0: all classes).
    """

    def __init__(self, embedding_size: int, num_classes: int, *, k: int = 3, scale: float = 64.0, margin: float = 0.5, sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, k=k, sample_rate=sample_rate)
        self.m2 = check_margin("subcenter-arcface margin (radians)", margin)
