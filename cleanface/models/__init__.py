"""Face-recognition backbones behind one registry.

``create_backbone(name, embedding_size=512, input_size=112, **kwargs)`` builds any of
:func:`list_backbones`; every backbone maps ``(B, 3, H, W)`` images to ``(B, D)``
un-normalised embeddings and exposes ``embedding_size`` and ``input_size``.
"""

from cleanface.models import compact, iresnet, mobilefacenet  # noqa: F401  (registers the backbones)
from cleanface.models._registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
