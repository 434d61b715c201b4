"""Model-parallel margin head (distributed Partial FC): class weights sharded over ranks.

Each of the W ranks holds the weights of a contiguous shard of the classes (rank r owns
classes ``[r * C // W, (r + 1) * C // W)``). A step:

1. all-gathers the embeddings (with gradient: :func:`all_gather_with_grad`) and labels
   of every rank, giving the global batch (B, D), B = W x local batch;
2. computes cosines of the global batch against the local shard (optionally only the
   shard's positive classes plus sampled negatives, as in Partial FC);
3. shares each sample's target cosine across ranks (needed by ElasticFace+, which ranks
   the whole batch), applies the margin on the rank that owns the target class, scales;
   heads that draw per step (ElasticFace) use the draws of the group's first rank
   (:meth:`MarginHead.share_draws`), so each sample gets the margin that one process
   seeded like the first rank would give it;
4. computes the softmax cross entropy with its row maximum and row sum all-reduced.

The loss and the gradients of the embeddings and of every shard equal those of one
process holding all classes and the whole batch. The gradient that reaches each rank's
backbone is that of the global mean loss through its own samples, so gradients of a
data-parallel backbone should be summed over ranks, not averaged (or the learning rate
scaled by W).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cleanface.errors import ConfigError, DataError
from cleanface.losses._registry import create_head
from cleanface.losses.partial_fc import sample_classes


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized tensors of all ranks along dim 0; backward sums the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.size = group, dist.get_rank(group), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size], None


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-gather ``x`` (b, ...) from every rank into (W * b, ...), letting gradients flow back.

    Every rank's gradient for its own slice is the sum over ranks of the gradients
    their losses send to that slice.
    """
    return _AllGather.apply(x, group)


def _all_gather(x: torch.Tensor, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross entropy over logits split by columns across ranks.

    ``target`` (B,) holds each sample's column in the local logits, or -1 where another
    rank owns the sample's class.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, group: Any) -> torch.Tensor:
        row_max = logits.detach().amax(dim=1)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = torch.exp(logits.detach() - row_max.unsqueeze(1))
        row_sum = exp.sum(dim=1)
        dist.all_reduce(row_sum, op=dist.ReduceOp.SUM, group=group)
        owned = target >= 0
        index = target.clamp_min(0).unsqueeze(1)
        target_logit = torch.where(owned, logits.detach().gather(1, index).squeeze(1), torch.zeros_like(row_max))
        dist.all_reduce(target_logit, op=dist.ReduceOp.SUM, group=group)
        loss = (row_max + torch.log(row_sum) - target_logit).mean()
        ctx.save_for_backward(exp / row_sum.unsqueeze(1), target)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        prob, target = ctx.saved_tensors
        owned = target >= 0
        grad = prob.clone()
        rows = torch.nonzero(owned).squeeze(1)
        grad[rows, target[rows]] -= 1.0
        return grad * (grad_loss / prob.shape[0]), None, None


class DistributedPartialFC(nn.Module):
    """A margin head whose class weights are sharded over the ranks of a process group.

    Parameters
    ----------
    head
        Registered head name (see :func:`cleanface.losses.list_heads`).
    embedding_size
        D.
    num_classes
        C, over all ranks.
    sample_rate
        Partial FC: fraction of each shard's classes used per training step, in (0, 1];
        the shard's classes present in the global batch are always used.
    group
        The process group (the default group when None); it must be initialised.
    **head_kwargs
        Options of the head (``scale``, ``margin``, ``k``, ``sigma``).

    Attributes
    ----------
    head
        The local head: weights of the shard, ``(num_local * K, D)``.
    class_start, class_end
        The shard's global class range ``[class_start, class_end)``.
    """

    def __init__(self, head: str, embedding_size: int, num_classes: int, *, sample_rate: float = 1.0, group: Any = None, **head_kwargs: Any) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("DistributedPartialFC needs an initialised torch.distributed process group")
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if num_classes < self.world_size:
            raise ConfigError(f"DistributedPartialFC needs at least one class per rank: {num_classes} classes, {self.world_size} ranks")
        self.num_classes = num_classes
        self.class_start = self.rank * num_classes // self.world_size
        self.class_end = (self.rank + 1) * num_classes // self.world_size
        self.sample_rate = float(sample_rate)
        self.head = create_head(head, embedding_size, self.class_end - self.class_start, **head_kwargs)
        self.head.share_draws(group)
        self.last_classes: torch.Tensor | None = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the global batch from this rank's (b, D) embeddings and (b,) labels."""
        sizes = _all_gather(torch.tensor([embeddings.shape[0]], device=labels.device), self.group)
        if bool((sizes != sizes[0]).any()):
            raise DataError(f"DistributedPartialFC needs the same batch size on every rank, got {sizes.tolist()}")
        x = all_gather_with_grad(embeddings, self.group)
        y = _all_gather(labels.long(), self.group)
        local = y - self.class_start
        owned = (local >= 0) & (local < self.head.num_classes)
        classes = None
        if self.training and self.sample_rate < 1.0:
            classes = self._sample(local[owned])
            local = torch.where(owned, torch.searchsorted(classes, local.clamp_min(0)), local)
        self.last_classes = None if classes is None else classes + self.class_start
        cos = self.head.cosine(x, classes)
        target = torch.where(owned, local, torch.full_like(local, -1))
        index = target.clamp_min(0).unsqueeze(1)
        target_cos = cos.gather(1, index).squeeze(1)
        shared = torch.where(owned, target_cos.detach(), torch.zeros_like(target_cos))
        dist.all_reduce(shared, op=dist.ReduceOp.SUM, group=self.group)  # every sample's target cosine
        with_margin = self.head.target_margin(torch.where(owned, target_cos, shared))
        new_target = torch.where(owned, with_margin, target_cos)
        logits = self.head.scale * cos.scatter(1, index, new_target.unsqueeze(1))
        return _ShardedCrossEntropy.apply(logits, target, self.group)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`forward`."""
        return self(embeddings, labels)

    def _sample(self, positives: torch.Tensor) -> torch.Tensor:
        return sample_classes(positives, self.head.num_classes, self.sample_rate)[0]
