"""Training throughput: the cleanface trainer against a bare PyTorch loop, and the data path alone.

All three read the same synthetic faces at the same size with the same backbone, head,
batch and optimiser:

* **bare loop**: the whole training set as one float tensor in memory, random batches,
  forward, loss, backward, SGD step: nothing else;
* **trainer**: :func:`cleanface.training.trainer.train` (decode-once cache read by a
  prefetch thread, per-step schedule, gradient clipping, metrics, checkpoints per epoch),
  the median images/s of its epochs after the first (from ``metrics.jsonl``);
* **data only**: the trainer's batch source reading the cache, with no model.

Usage::

    python benchmarks/train_throughput.py [--backbone compact] [--size 64] [--batch 64]
        [--images 2000] [--epochs 6] [--repeats 2] [--device cpu] [--amp off] [--out FILE.json]

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


def bare_loop(x: torch.Tensor, y: torch.Tensor, classes: int, args: argparse.Namespace, steps: int) -> float:
    """Images/s of a minimal loop over in-memory tensors (the first 5 steps are not timed)."""
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, embedding_size=args.dim, input_size=args.size).to(args.device)
    head = create_head("subcenter-arcface", args.dim, classes, k=3).to(args.device)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(steps + 5):
        if step == 5:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = torch.randint(0, len(x), (args.batch,), generator=g)
        xb, yb = x[b].to(args.device, non_blocking=True), y[b].to(args.device, non_blocking=True)
        with torch.autocast(args.device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = head.loss(backbone(xb), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="compact")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=2)
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
    bare, trainer = [], []
    for attempt in range(args.repeats):  # alternate the two, keep each one's best: least disturbed by other load
        bare.append(bare_loop(x, y, index.num_identities, args, steps=steps_per_epoch * max(1, args.epochs - 1)))
        run = train(data, work / "run", head="subcenter-arcface", k=3, backbone=args.backbone, input_size=args.size, embedding_size=args.dim,
                    batch_size=args.batch, epochs=args.epochs, lr=0.05, device=args.device, amp=args.amp, cache_dir=str(work / "cache"),
                    log_every=steps_per_epoch, overwrite=True, silent=True)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        later = rows[1:] or rows  # the first epoch includes start-up
        trainer.append(float(np.median([r["images_per_s"] for r in later])))
    bare_ips, trainer_ips = max(bare), max(trainer)
    result = {
        "backbone": args.backbone, "size": args.size, "batch": args.batch, "images": len(index), "device": args.device, "amp": args.amp,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "bare_loop_images_per_s": round(bare_ips, 1), "trainer_images_per_s": round(trainer_ips, 1),
        "trainer_vs_bare": round(trainer_ips / bare_ips, 3), "bare_runs": [round(v, 1) for v in bare], "trainer_runs": [round(v, 1) for v in trainer], "data_only_images_per_s": round(data_ips, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
