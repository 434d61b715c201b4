"""Does the trainer learn real faces? Train on LFW DevTrain, verify on the identity-disjoint pairsDevTest.

Training pool: the people of ``peopleDevTrain.txt`` with at least 4 images (430 people,
4,964 images), 64x64 faces from a 128x128 centre crop of the deep-funneled images.
Evaluation: ``pairsDevTest.txt`` (1,000 pairs of other people), 10-fold accuracy.

Usage::

    python benchmarks/lfw_train.py [--lfw ../shared/data/lfw] [--loss elastic-arc+] [--epochs 12]
        [--out bench-out/lfw_train]

Writes ``OUT/pool.npz``, the run in ``OUT/run`` and the result as ``OUT/result.json``.
Exits with a message when LFW is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"))
    p.add_argument("--loss", default="elastic-arc+")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--scale", type=float, default=32.0)
    p.add_argument("--margin", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench-out" / "lfw_train"))
    args = p.parse_args()
    root = Path(args.lfw)
    if not (root / "images_deepfunneled").is_dir() or not (root / "peopleDevTrain.txt").is_file():
        sys.exit(f"LFW not found at {root} (expected images_deepfunneled/ and peopleDevTrain.txt); pass --lfw PATH")

    from cleanface.data.lfw import lfw_index
    from cleanface.inference.run import load_run
    from cleanface.training.trainer import train_final
    from cleanface.eval.pairs import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = lfw_index(root / "images_deepfunneled", root / "peopleDevTrain.txt", min_images=4)
    pool.save(out / "pool.npz")
    settings = dict(backbone="compact", input_size=64, embedding_size=128, crop=128, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, scale=args.scale, margin=args.margin, grad_clip=0, seed=args.seed, device="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    run = train_final(out / "pool.npz", out / "run", loss=args.loss, overwrite=True, **settings)
    train_s = time.perf_counter() - t0
    loaded = load_run(run)
    result = evaluate(loaded.backbone, root / "pairsDevTest.txt", images_root=root / "images_deepfunneled", size=64, crop=128)
    summary = {
        "pool": {"identities": int(pool.num_identities), "images": len(pool)}, "loss": args.loss, "settings": settings,
        "train_wall_s": round(train_s, 1), "total_cpu_s": round(time.process_time() - c0, 1),
        "images_per_s_median": float(np.median([json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()])),
        "pairs": "pairsDevTest.txt", "accuracy": result["accuracy"], "accuracy_std": result["accuracy_std"],
        "tar_at_far": result["tar_at_far"], "auc": result["auc"],
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
