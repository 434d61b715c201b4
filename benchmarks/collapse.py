"""Few identities with many faces each: does default sub-center training collapse, and does purify notice?

Issue 16 saw `train-subcenter` with the published head (s=64, m=0.5, gradient clip 5, lr 0.1) on 20
identities x ~480 aligned faces rise to 21% training accuracy, fall to 0% and stay there (loss
10.9), after which purify merged all 20 identities into one. This benchmark rebuilds such a set from
the synthetic generator (``make_synthetic``, 20 identities x ``--per`` faces, 64x64, 10% close-set
noise), trains it twice with everything else at the CPU defaults:

* ``published``: scale 64, margin 0.5, grad_clip 5 (the defaults before issue 16);
* ``default``: the defaults now (scale 32, margin 0.3 on CPU, grad_clip 5);

and records training accuracy per epoch, then runs purify with its defaults on each (what a new user
gets: the sanity check refusing a collapsed model, or a cleaned set). Results in
``OUT/collapse.json``.

    python benchmarks/collapse.py --out bench-out/collapse --per 240 --epochs 12
    python benchmarks/collapse.py --source lfw --epochs 20      # LFW people with >= 40 images (19), 10% noise
    python benchmarks/collapse.py --source celeba --epochs 6    # the CelebA 20% noisy set (177 identities)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import lfw_noise as ln  # noqa: E402

ARMS = {"published": {"scale": 64.0, "margin": 0.5, "grad_clip": 5.0}, "default": {}}


def accuracy_by_epoch(run: Path) -> dict[int, float]:
    """The last logged training accuracy of each epoch."""
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("acc") is not None:
            out[int(-(-row["epoch"] // 1))] = round(float(row["acc"]), 4)
    return out


def purify_outcome(run: Path, noisy: Path, out: Path) -> dict:
    """purify with default settings: its counts and flag quality, or the sanity check's one-line refusal."""
    from cleanface.errors import CleanfaceError
    from cleanface.purify.runner import purify

    try:
        purify(run, noisy, out, truth=noisy / "noise_truth.csv", overwrite=True, silent=True)
    except CleanfaceError as exc:
        return {"refused": str(exc)}
    s = json.loads((out / "summary.json").read_text())
    return {"identities": [s["identities_before"], s["identities_after"]], "actions": s["actions"],
            "calibrated_threshold": s.get("calibrated_threshold"), "flags": s["truth"]["overall"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out/collapse")
    p.add_argument("--per", type=int, default=240, help="faces per identity")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--arms", default="published,default")
    p.add_argument("--source", choices=("synthetic", "lfw", "celeba"), default="synthetic")
    args = p.parse_args()
    import torch

    from cleanface.data.noise import inject_noise
    from cleanface.data.open import open_dataset
    from cleanface.data.synthetic import make_synthetic
    from cleanface.training.trainer import train_subcenter

    torch.set_num_threads(1)
    out = Path(args.out)
    tag = {"synthetic": f"synthetic_{args.per}", "lfw": "lfw40", "celeba": "celeba20"}[args.source]
    noisy = out / f"noisy_{tag}"
    if args.source == "celeba":  # the 20% CelebA noisy set of pretrained_noise.py: 177 identities x about 28 faces
        noisy = REPO / "bench-out" / "celeba_noise" / "rate_20" / "noisy"
        if not (noisy / "noise.json").is_file():
            sys.exit(f"{noisy} not found: run `python benchmarks/pretrained_noise.py build --dataset celeba` first")
    if not (noisy / "noise.json").is_file():
        if args.source == "synthetic":
            faces = out / f"faces_{args.per}"
            if not faces.is_dir():
                make_synthetic(faces, identities=20, per_identity=args.per, size=64, seed=0, silent=True)
            index = open_dataset(faces, silent=True)
        else:  # the LFW people with at least 40 images (19 of them, 1,862 faces): few identities, many faces each
            everyone = open_dataset(REPO.parent / "shared" / "data" / "lfw" / "images_deepfunneled", silent=True)
            index = everyone.subset(np.flatnonzero(everyone.counts()[everyone.labels] >= 40))
        inject_noise(index, noisy, close_set=0.1, seed=0, overwrite=True)
    crop = 128 if args.source == "lfw" else None
    result = ln.read_json(out / "collapse.json") or {}
    for arm in args.arms.split(","):
        run = out / f"{arm}_{tag}_e{args.epochs}"
        t0 = time.process_time()
        train_subcenter(noisy, run, k=3, epochs=args.epochs, seed=0, device="cpu", cache_dir=str(out / "cache"), resume=True,
                        silent=True, crop=crop, **ARMS[arm])
        cfg = json.loads((run / "config.json").read_text())["settings"]
        key = f"{arm}_{tag}_e{args.epochs}"
        result[key] = {
            "head": {k: cfg[k] for k in ("scale", "margin", "grad_clip", "lr", "k")}, "train_cpu_s": round(time.process_time() - t0, 1),
            "accuracy_by_epoch": accuracy_by_epoch(run), "purify": purify_outcome(run, noisy, out / f"purify_{arm}_{tag}")}
        ln.write_json(out / "collapse.json", result)
        ln.log(f"{arm}: {result[key]}")


if __name__ == "__main__":
    main()
