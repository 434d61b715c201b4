"""Embedding throughput of the backbones on this machine: images/s of ``cleanface.inference.embed.embed_arrays``.

For each backbone (random weights: speed does not depend on them) it embeds ``--images``
random uint8 faces at the backbone's usual input size, flip-fused as ``cleanface embed``
does (two forward passes per image), after one warm-up batch, and reports images/s.
Writes JSON to ``--out``.

Usage::

    python benchmarks/embed_throughput.py [--backbones compact:64,iresnet50:112] [--images 512]
        [--batch-size 64] [--device cpu] [--out bench-out/embed_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from cleanface.models import create_backbone
from cleanface.inference.embed import embed_arrays


def measure(name: str, size: int, *, images: int, batch: int, device: str) -> dict:
    torch.manual_seed(0)
    backbone = create_backbone(name, embedding_size=512 if name.startswith("iresnet") else 128, input_size=size).to(device).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    embed_arrays(backbone, pixels[:batch], batch_size=batch, device=device)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    embed_arrays(backbone, pixels, batch_size=batch, device=device)
    wall = time.perf_counter() - t0
    return {"backbone": name, "input_size": size, "images": images, "batch_size": batch, "flip_fused": True,
            "wall_s": round(wall, 2), "cpu_s": round(time.process_time() - c0, 2), "images_per_s": round(images / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="compact:64,iresnet50:112", help="name:input_size, comma-separated")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench-out/embed_throughput.json")
    args = p.parse_args()
    rows = []
    for item in args.backbones.split(","):
        name, size = item.split(":")
        row = measure(name, int(size), images=args.images, batch=args.batch_size, device=args.device)
        print(json.dumps(row))
        rows.append(row)
    result = {"device": args.device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
