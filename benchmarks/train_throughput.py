"""Training throughput: the cleanface trainer against a bare PyTorch loop, and the data path alone.

All three read the same synthetic faces at the same size with the same backbone, head,
batch and optimiser:

* **bare loop**: the whole training set as one float tensor in memory, random batches,
  forward, loss, backward, SGD step: nothing else; images/s of as many steps as a
  trainer epoch;
* **trainer**: :func:`cleanface.training.trainer.train` (decode-once cache read by a
  prefetch thread, per-step schedule, gradient clipping, metrics, checkpoints per epoch),
  images/s of each epoch after the first;
* **data only**: the trainer's batch source reading the cache, with no model.

Trainer and bare loop alternate epoch by epoch in one process (see :class:`Interleave`);
the result is the median over all epoch pairs of ``trainer / bare``.

Usage::

    python benchmarks/train_throughput.py [--backbone compact] [--size 64] [--batch 64]
        [--images 2000] [--epochs 12] [--repeats 4] [--device cpu] [--amp off] [--out FILE.json]

On a GPU: ``--backbone iresnet50 --size 112 --batch 128 --device cuda --amp fp16``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cleanface.data.cache import DecodeCache
from cleanface.data.open import open_dataset
from cleanface.data.synthetic import make_synthetic
from cleanface.losses import create_head
from cleanface.models import create_backbone
from cleanface.training.batches import BatchSource, rank_batches
from cleanface.training.trainer import train


class BareLoop:
    """A minimal training loop over in-memory tensors: random batches, forward, loss, backward, SGD step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: int, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.x, self.y, self.args = x, y, args
        self.backbone = create_backbone(args.backbone, embedding_size=args.dim, input_size=args.size).to(args.device)
        self.head = create_head("subcenter-arcface", args.dim, classes, k=3).to(args.device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")
        self.g = torch.Generator().manual_seed(0)
        self.run(5)  # warm-up, as the trainer's first epoch is not counted

    def run(self, steps: int) -> float:
        """Images/s over ``steps`` steps."""
        args = self.args
        _sync(args.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            b = torch.randint(0, len(self.x), (args.batch,), generator=self.g)
            xb, yb = self.x[b].to(args.device, non_blocking=True), self.y[b].to(args.device, non_blocking=True)
            with torch.autocast(args.device.split(":")[0], dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = self.head.loss(self.backbone(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        _sync(args.device)
        return steps * args.batch / (time.perf_counter() - t0)


class Interleave:
    """``on_step`` hook of the trainer: times each trainer epoch, then runs one bare epoch.

    The two alternate epoch by epoch in one process, so a slow spell of a shared machine
    (they last seconds to minutes) falls on neighbouring epochs of both: each pair's ratio
    is a fair comparison even when the absolute rates drift. A trainer epoch is timed from
    the end of the preceding bare epoch to its last step's hook, so it includes everything
    the trainer does: batch planning, the prefetch thread, the per-epoch checkpoint.
    """

    def __init__(self, bare: BareLoop, steps_per_epoch: int, batch: int) -> None:
        self.bare, self.steps, self.batch = bare, steps_per_epoch, batch
        self.trainer: list[float] = []
        self.bare_rates: list[float] = []
        self.t0 = time.perf_counter()

    def __call__(self, step: int) -> None:
        if step % self.steps:
            return
        _sync(self.bare.args.device)
        rate = self.steps * self.batch / (time.perf_counter() - self.t0)
        if step > self.steps:  # the first epoch includes start-up
            self.trainer.append(rate)
            self.bare_rates.append(self.bare.run(self.steps))
        self.t0 = time.perf_counter()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="compact")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cleanface-throughput-"))
    per = 20
    data = work / "faces"
    if not (data / "COMPLETE").exists() and not data.is_dir():
        data = make_synthetic(data, identities=max(2, args.images // per), per_identity=per, size=args.size, seed=0, silent=True)
    index = open_dataset(data)
    cache = DecodeCache.build(index, work / "cache", size=args.size, crop=None, silent=True)
    x = torch.from_numpy(np.array(cache.images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    y = torch.from_numpy(index.labels.astype(np.int64))

    source = BatchSource(index, index.labels, cache=cache, size=args.size, crop=None)
    t0, n = time.perf_counter(), 0
    for epoch in range(2):
        for xb, _ in source.iterate(rank_batches(source.samples, 0, epoch, global_batch=args.batch, rank=0, world=1)):
            n += len(xb)
    data_ips = n / (time.perf_counter() - t0)

    steps_per_epoch = len(index) // args.batch
    pairs = []
    for attempt in range(args.repeats):
        timer = Interleave(BareLoop(x, y, index.num_identities, args), steps_per_epoch, args.batch)
        train(data, work / "run", head="subcenter-arcface", k=3, backbone=args.backbone, input_size=args.size, embedding_size=args.dim,
              batch_size=args.batch, epochs=args.epochs, lr=0.05, device=args.device, amp=args.amp, cache_dir=str(work / "cache"),
              log_every=steps_per_epoch, overwrite=True, silent=True, on_step=timer)
        pairs += list(zip(timer.bare_rates, timer.trainer))
    bare, trainer = np.array(pairs).T
    ratios = trainer / bare
    result = {
        "backbone": args.backbone, "size": args.size, "batch": args.batch, "images": len(index), "steps_per_epoch": steps_per_epoch,
        "device": args.device, "amp": args.amp, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "bare_loop_images_per_s": round(float(np.median(bare)), 1), "trainer_images_per_s": round(float(np.median(trainer)), 1),
        "trainer_vs_bare": round(float(np.median(ratios)), 3),
        "trainer_vs_bare_quartiles": [round(float(q), 3) for q in np.percentile(ratios, [25, 75])],
        "epoch_pairs": [[round(float(b), 1), round(float(t), 1)] for b, t in pairs],
        "data_only_images_per_s": round(data_ips, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
