"""Partial FC class sampling: all positive classes of the batch plus random negatives.

An, Zhu et al., "Partial FC: Training 10 Million Identities on a Single Machine" (2021).
Each training step computes logits over only a fraction of the classes; the classes
present in the batch are always among them, so every sample keeps its target logit.
"""

from __future__ import annotations

import math

import torch


def sample_count(num_positive: int, num_classes: int, sample_rate: float) -> int:
    """How many classes a step keeps: ``max(positives, ceil(rate * C))``, at most C."""
    return min(num_classes, max(num_positive, math.ceil(sample_rate * num_classes)))


def sample_classes(labels: torch.Tensor, num_classes: int, sample_rate: float, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the classes of one Partial FC step.

    Parameters
    ----------
    labels
        Class ids of the batch, shape (B,), values in [0, C).
    num_classes
        C.
    sample_rate
        Fraction of the C classes to keep, in (0, 1].
    generator
        Random generator for the negatives (the global one when None).

    Returns
    -------
    classes
        Sorted kept class ids, shape (C',), int64, with C' = :func:`sample_count`.
    remapped
        ``labels`` as positions in ``classes``, shape (B,), int64.
    """
    labels = labels.long()
    positives = torch.unique(labels)
    count = sample_count(positives.numel(), num_classes, sample_rate)
    device = generator.device if generator is not None else labels.device
    score = torch.rand(num_classes, generator=generator, device=device).to(labels.device)
    score[positives] = 2.0  # above every random score: positives are always kept
    classes = torch.topk(score, count, sorted=False).indices.sort().values
    return classes, torch.searchsorted(classes, labels)
