"""Hand-made embeddings whose right purification answer is known."""

from __future__ import annotations

import numpy as np

D = 24


def axis(i: int, d: int = D) -> np.ndarray:
    v = np.zeros(d, dtype=np.float64)
    v[i] = 1.0
    return v


def toward(a: int, b: int, degrees: float, d: int = D) -> np.ndarray:
    """The unit vector at ``degrees`` from axis ``a`` rotated toward axis ``b``."""
    t = np.radians(degrees)
    return np.cos(t) * axis(a, d) + np.sin(t) * axis(b, d)


def basis_centers(num_classes: int, k: int = 3, d: int = D) -> np.ndarray:
    """Sub-center j of identity c is axis ``k*c + j`` (all mutually orthogonal)."""
    return np.stack([np.stack([axis(k * c + j, d) for j in range(k)]) for c in range(num_classes)]).astype(np.float32)
