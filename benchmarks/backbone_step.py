"""Training-step time of the backbones with a margin head, on the CPU.

For each backbone it times full training steps (forward, sub-center ArcFace loss,
backward, SGD step) on random images, after warm-up steps, and reports the median step
time, images per second and the parameter count. Default: the ``compact`` backbone at
64x64, batch 64, 128-d, one thread, NCHW and channels_last. Prints a table and writes
JSON to ``--out``.

Usage::

    python benchmarks/backbone_step.py [--backbones compact,mobilefacenet] [--size 64] [--batch-size 64]
        [--threads 1] [--steps 10] [--width 1.0] [--out bench-out/backbone_step.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path


def time_steps(name: str, *, size: int, batch: int, dim: int, classes: int, steps: int, warmup: int, channels_last: bool, width: float | None) -> dict:
    import torch

    from cleanface.losses import create_head
    from cleanface.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone(name, embedding_size=dim, input_size=size, **({"width": width} if name == "compact" else {}))
    head = create_head("subcenter-arcface", dim, classes, k=3, scale=32.0)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory)
    y = torch.randint(0, classes, (batch,))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = head.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "backbone": name,
        "channels_last": channels_last,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s_median": round(median, 4),
        "step_s_min": round(min(times), 4),
        "images_per_s": round(batch / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="compact", help="comma-separated registry names")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=float, default=None, help="compact width multiplier (default: its own)")
    parser.add_argument("--out", default="bench-out/backbone_step.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.backbones.split(","):
        for channels_last in (False, True):
            row = time_steps(name, size=args.size, batch=args.batch_size, dim=args.embedding_size, classes=args.classes,
                             steps=args.steps, warmup=args.warmup, channels_last=channels_last, width=args.width)
            rows.append(row)
            print(f"{name:14s} channels_last={str(channels_last):5s} params={row['params']:>10,d} "
                  f"step median {row['step_s_median']:.3f}s (min {row['step_s_min']:.3f}s)  {row['images_per_s']:.0f} img/s")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "results": rows,
    }
    from cleanface._atomic import atomic_write_json

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
