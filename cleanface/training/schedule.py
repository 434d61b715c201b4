"""Learning rate per step: linear warm-up, then polynomial or cosine decay to zero.

The rate is a pure function of the step, so a resumed run needs only its step number.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str = "poly", power: float = 1.0) -> float:
    """The learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps`` steps; then ``poly`` decays as ``(1 - p) ** power`` and ``cosine`` as
    ``(1 + cos(pi p)) / 2``, with ``p`` the fraction of the post-warm-up steps done;
    ``constant`` stays at ``base_lr``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return base_lr * (1.0 - p) ** power
