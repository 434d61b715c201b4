"""The base of every margin head: normalised weights, float32 cosines, target-only margin.

A head holds ``weight`` of shape (C * K, D): K sub-centers per class, class-major (row
``c * K + k`` is sub-center k of class c). Given embeddings (B, D) it computes the
cosine to every weight row in float32 (even under autocast), max-pools the K
sub-centers of each class into a class cosine (B, C), replaces the target cosine by its
margin version (:meth:`MarginHead.target_margin`, overridden by each head) and scales
by s. Optional Partial FC sampling (``sample_rate`` < 1) keeps, during training, all
classes present in the batch plus a random sample of the others.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cleanface.errors import ConfigError, DataError
from cleanface.losses.partial_fc import sample_classes


class MarginHead(nn.Module):
    """Cosine-softmax classifier with a margin on the target logit.

    Parameters
    ----------
    embedding_size
        D.
    num_classes
        C.
    scale
        s, the logit scale.
    k
        Sub-centers per class (1 for plain heads).
    sample_rate
        Partial FC: fraction of the classes used per training step, in (0, 1]. All
        classes of the batch are always kept; 1.0 uses every class.
    """

    def __init__(self, embedding_size: int, num_classes: int, *, scale: float = 64.0, k: int = 1, sample_rate: float = 1.0) -> None:
        super().__init__()
        for what, value in (("embedding_size", embedding_size), ("num_classes", num_classes), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"head {what} must be a positive integer, got {value!r}")
        if not scale > 0:
            raise ConfigError(f"head scale must be positive, got {scale}")
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"head sample_rate must be in (0, 1], got {sample_rate}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.k = k
        self.scale = float(scale)
        self.sample_rate = float(sample_rate)
        self.weight = nn.Parameter(torch.empty(num_classes * k, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.last_classes: torch.Tensor | None = None

    # -- what a concrete head overrides --------------------------------------------------
    def target_margin(self, target_cos: torch.Tensor) -> torch.Tensor:
        """Margin version of the target cosines: (B,) float32 -> (B,) float32 (unscaled)."""
        raise NotImplementedError

    def share_draws(self, group: Any = None) -> None:
        """Make the ranks of ``group`` use the same random draws per step (a no-op: this head draws none).

        Heads that draw per step (ElasticFace) override it; the sharded head calls it.
        """

    # -- shared machinery ----------------------------------------------------------------
    def cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Class cosines: (B, D) -> (B, C), or (B, len(classes)) for a subset.

        Sub-center cosines are max-pooled over K. Autocast is switched off and the inputs
        are promoted to at least float32, so half-precision embeddings give float32
        cosines (float64 embeddings or weights give float64).
        """
        weight = self.weight
        if classes is not None:
            weight = weight.view(self.num_classes, self.k, -1)[classes].reshape(-1, self.embedding_size)
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weight.dtype), torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.to(dtype), dim=1)
            w = F.normalize(weight.to(dtype), dim=1)
            cos = x @ w.t()
        if self.k > 1:
            cos = cos.view(cos.shape[0], -1, self.k).amax(dim=2)
        return cos

    def logits_from_cosine(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (B, C') from class cosines (B, C') with the margin on column ``labels``."""
        with torch.autocast(cos.device.type, enabled=False):
            cos = cos.to(torch.promote_types(cos.dtype, torch.float32))
            index = labels.long().unsqueeze(1)
            target = self.target_margin(cos.gather(1, index).squeeze(1))
            return self.scale * cos.scatter(1, index, target.unsqueeze(1))

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise DataError(f"head expects embeddings of shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise DataError(f"head expects labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"head labels must be integers, got {labels.dtype}")
        if labels.device.type == "cpu" and labels.numel():  # on accelerators this check would sync every step
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(f"head labels must lie in [0, {self.num_classes}), got values from {low} to {high}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits over all classes with the target margin: (B, D), (B,) -> (B, C), float32 (float64 for float64 inputs)."""
        self._check(embeddings, labels)
        return self.logits_from_cosine(self.cosine(embeddings), labels)

    def forward_train(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training logits and the labels that index them.

        With ``sample_rate`` < 1 in training mode the logits cover only the sampled classes
        (B, C'), and the returned labels (B,) are remapped to columns of those logits; the
        sampled class ids are kept in ``last_classes``. Otherwise: ``(forward(...), labels)``.
        """
        self._check(embeddings, labels)
        if not self.training or self.sample_rate >= 1.0:
            self.last_classes = None
            return self.logits_from_cosine(self.cosine(embeddings), labels), labels
        classes, remapped = sample_classes(labels, self.num_classes, self.sample_rate)
        self.last_classes = classes
        return self.logits_from_cosine(self.cosine(embeddings, classes), remapped), remapped

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy of :meth:`forward_train` logits: a float32 scalar."""
        logits, targets = self.forward_train(embeddings, labels)
        return F.cross_entropy(logits, targets)

    def class_centers(self) -> torch.Tensor:
        """L2-normalised weights as (C, K, D), detached."""
        return F.normalize(self.weight.detach().float(), dim=1).view(self.num_classes, self.k, self.embedding_size)

    def extra_repr(self) -> str:
        rate = f", sample_rate={self.sample_rate}" if self.sample_rate < 1 else ""
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, k={self.k}, scale={self.scale}{rate}"


def check_margin(name: str, value: float, *, upper: float = math.pi / 2) -> float:
    """Validate a margin hyper-parameter: finite and in [0, upper]."""
    if not (isinstance(value, (int, float)) and 0.0 <= value <= upper):
        raise ConfigError(f"{name} must be a number in [0, {upper:.3g}], got {value!r}")
    return float(value)
