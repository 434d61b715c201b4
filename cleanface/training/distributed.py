"""Several training processes under ``torchrun``: process group set-up and gradient summing.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the trainer
then joins a process group (NCCL on CUDA, gloo on CPU), wraps the backbone in DDP and
shards the class weights of the head over the ranks (:class:`DistributedPartialFC`).
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        init(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def init(backend: str) -> None:
    """Join the process group, and leave it when the interpreter exits.

    Left to the interpreter's teardown, the group's communication threads could be
    destroyed while still running, and the process would end with SIGABRT
    ("terminate called without an active exception") after its work was done.
    """
    dist.init_process_group(backend=backend)
    atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave_and_exit() -> None:
    """End a process of a successful multi-process command: in step with the others, without interpreter teardown.

    Waits until every process is done (rank 0 writes the run's outputs after the last
    collective), frees the DDP state and its communication callbacks while Python is
    still whole, leaves the process group, flushes the output and exits with status 0.
    """
    if dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def _sum_hook(state, bucket):  # unannotated: DDP checks real annotations, and this module postpones them
    """DDP gradient hook that sums over ranks instead of averaging.

    The sharded head returns the mean loss of the *global* batch, so each rank's
    backbone gradient is already its share of the global gradient: the sum is the gradient.
    """
    fut = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_backbone(backbone: nn.Module, d: Dist, device: str) -> nn.Module:
    """DDP around ``backbone`` with summed gradients (returns it unchanged for one process)."""
    if d.world <= 1:
        return backbone
    ids = [d.local_rank] if device.startswith("cuda") else None
    ddp = nn.parallel.DistributedDataParallel(backbone, device_ids=ids)  # buffers (BatchNorm statistics) follow rank 0
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def sync_buffers(module: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart in the last forward pass)."""
    if d.world <= 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def gather_head_weight(weight: torch.Tensor, d: Dist) -> torch.Tensor:
    """The full (C * K, D) head weight from every rank's shard, in class order (on every rank)."""
    if d.world <= 1:
        return weight.detach().cpu()
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, weight.detach().cpu())
    return torch.cat(parts, dim=0)


def state_hash(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module``: equal across ranks when they agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_strings(value: str, d: Dist) -> list[str]:
    if d.world <= 1:
        return [value]
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, value)
    return parts
