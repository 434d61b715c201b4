"""Margin heads (ArcFace, CosFace, sub-center ArcFace, ElasticFace) behind one registry.

``create_head(name, embedding_size, num_classes, **kwargs)`` builds any of
:func:`list_heads`. A head maps embeddings (B, D) and labels (B,) to float32 logits
(B, C) with the margin on the target, ``loss(embeddings, labels)`` gives the mean cross
entropy, and ``class_centers()`` the normalised (C, K, D) weights. Angular margins are
in radians, cosine margins in cosine units.
"""

from cleanface.losses._base import MarginHead
from cleanface.losses._margin import combined_margin
from cleanface.losses._registry import create_head, head_class, list_heads, register_head
from cleanface.losses.arcface import ArcFace, CombinedMarginHead, CosFace
from cleanface.losses.elastic import ElasticArc, ElasticArcPlus, ElasticCos, ElasticCosPlus, ElasticHead
from cleanface.losses.partial_fc import sample_classes
from cleanface.losses.subcenter import SubCenterArcFace

__all__ = [
    "ArcFace",
    "CombinedMarginHead",
    "CosFace",
    "ElasticArc",
    "ElasticArcPlus",
    "ElasticCos",
    "ElasticCosPlus",
    "ElasticHead",
    "MarginHead",
    "SubCenterArcFace",
    "combined_margin",
    "create_head",
    "head_class",
    "list_heads",
    "register_head",
    "sample_classes",
]
