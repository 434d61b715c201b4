"""Identity-level noise: does purify find one person under two names and two people under one name?

On each of three sets (LFW DevTrain people with >= 4 images, the CelebA pool of
``pretrained_noise.py`` and a synthetic set like the demo's) ``inject_noise`` plants
``--pairs`` (10) merged pairs (two people under one name: purify should propose a *split*
of the kept name), ``--pairs`` split identities (one person under two names,
``<name>__split``: purify should propose a *merge* of the two) and 20% image noise (half
close-set, half open-set). A sub-center ArcFace model (K=3, the settings of
``lfw_noise.py``) is trained on the noisy set and ``purify`` runs with its defaults.

Scored from ``summary.json`` (no ground truth is used by purify):

* merge proposals (``summary["merges"]``, each a group of identities): a proposal is right
  when all its names belong to one planted pair; recall = planted pairs found / planted;
* split proposals (``summary["splits"]``): right when the identity is a planted merged pair.

Usage::

    python benchmarks/identity_noise.py build  --dataset lfw|celeba|synthetic   # noisy set, model, embeddings
    python benchmarks/identity_noise.py purify --dataset lfw|celeba|synthetic   # purify defaults, scored
    python benchmarks/identity_noise.py purify --dataset lfw|celeba --embedder dlib   # from dlib's embeddings (bench extra)
    python benchmarks/identity_noise.py render                                  # the BENCHMARKS.md table

Results: ``bench-out/identity_noise/DATASET/result_EMBEDDER.json``. Exits with a message when a
real set is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import lfw_noise as ln  # noqa: E402

OUT = REPO / "bench-out" / "identity_noise"
DATA = {"lfw": REPO.parent / "shared" / "data" / "lfw", "celeba": REPO.parent / "shared" / "data" / "celeba"}
CROP = {"lfw": 128, "celeba": None, "synthetic": None}
DATASETS = ("lfw", "celeba", "synthetic")
EMBEDDERS = ("own", "dlib")
EMBEDDER_TEXT = {"own": "own model (sub-center K=3 on the noisy set)", "dlib": "dlib ResNet (pretrained, centred)"}


def pool_and_outside(dataset: str):
    """The clean pool and the outside faces of ``dataset``."""
    from cleanface.data.index import DatasetIndex
    from cleanface.data.open import open_dataset

    out = OUT / dataset
    out.mkdir(parents=True, exist_ok=True)
    if dataset == "lfw":
        if not (DATA["lfw"] / "images_deepfunneled").is_dir():
            sys.exit(f"LFW not found at {DATA['lfw']}")
        return ln.build_pool(DATA["lfw"], out, quick=False)
    if dataset == "celeba":
        if not (DATA["celeba"] / "images").is_dir():
            sys.exit(f"CelebA not found at {DATA['celeba']}")
        import pretrained_noise as pn

        pool, outside, _ = pn.split_celeba(open_dataset(DATA["celeba"] / "images", silent=True))
        return pool, outside
    from cleanface.data.synthetic import make_synthetic

    faces, others = out / "faces", out / "outside_faces"
    if not faces.is_dir():  # the demo's set: 100 identities x 24 faces; 40 more identities give the open-set faces
        make_synthetic(faces, identities=100, per_identity=24, size=64, seed=0, silent=True)
    if not others.is_dir():
        make_synthetic(others, identities=40, per_identity=6, size=64, seed=0, first_identity=100, silent=True)
    del DatasetIndex
    return open_dataset(faces, silent=True), open_dataset(others, silent=True)


def noisy_path(dataset: str) -> Path:
    return OUT / dataset / "noisy"


def step_build(args) -> None:
    from cleanface.data.noise import inject_noise

    timings = ln.Timings(OUT / args.dataset / "timings.json")
    noisy = noisy_path(args.dataset)
    if not (noisy / "noise.json").is_file():
        pool, outside = pool_and_outside(args.dataset)
        fits = 0.9 * len(outside) / (len(pool) + 0.9 * len(outside))
        open_set = min(args.rate / 2, round(fits, 2))
        with timings.step(f"{args.dataset}/inject-noise"):
            inject_noise(pool, noisy, close_set=args.rate - open_set, open_set=open_set, outside=outside,
                         merge_identities=args.pairs, split_identities=args.pairs, seed=args.seed, overwrite=True)
    settings = ln.train_settings(argparse.Namespace(out=str(OUT / args.dataset), epochs=args.epochs), 0)
    settings["crop"] = CROP[args.dataset]
    ln.trained(OUT / args.dataset / "sub_k3", noisy, timings, f"{args.dataset}/train-subcenter-k3", head="subcenter-arcface",
               settings=settings, k=3)
    ln.log(f"{args.dataset}: built")


def planted(noisy: Path) -> tuple[list[set[str]], set[str]]:
    """The planted faults: the name pairs that hold one person (to merge) and the names that hold two (to split)."""
    noise = json.loads((noisy / "noise.json").read_text())
    to_merge = [set(pair) for pair in noise["splits"]]  # (name, name__split): one person, two names
    to_split = {kept for kept, _ in noise["merges"]}  # kept name now holds two people
    return to_merge, to_split


def score_merges(proposals: list[list[str]], to_merge: list[set[str]]) -> dict:
    right = [p for p in proposals if any(set(p) <= pair for pair in to_merge)]
    found = [pair for pair in to_merge if any(pair <= set(p) for p in proposals)]
    n = len(proposals)
    return {"proposals": n, "right": len(right), "precision": len(right) / n if n else None,
            "recall": len(found) / len(to_merge) if to_merge else None, "planted": len(to_merge)}


def score_splits(proposals: list[str], to_split: set[str]) -> dict:
    right = [p for p in proposals if p in to_split]
    n = len(proposals)
    return {"proposals": n, "right": len(right), "precision": len(right) / n if n else None,
            "recall": len(set(right)) / len(to_split) if to_split else None, "planted": len(to_split)}


def dlib_embeddings(dataset: str) -> Path:
    """dlib's descriptors of the noisy set, centred (``OUT/DATASET/emb_dlib/centred``), reusing earlier benchmarks' by content."""
    import dlib_embed

    out = OUT / dataset / "emb_dlib"
    earlier = {"lfw": "lfw_noise", "celeba": "celeba_noise"}[dataset]
    reuse = [(p.parent / "noisy", p) for p in sorted(REPO.glob(f"bench-out/{earlier}*/rate_*/emb_dlib")) if (p / "embeddings.json").is_file()]
    dlib_embed.embed_dataset(noisy_path(dataset), out, mode="detect" if dataset == "lfw" else "chip", reuse=reuse, silent=True)
    if not (out / "centred" / "embeddings.json").is_file():
        dlib_embed.write_centred(out, out / "centred")
    return out / "centred"


def step_purify(args) -> dict:
    from cleanface.purify.runner import purify, purify_from_embeddings
    from cleanface.purify.settings import PurifySettings

    noisy = noisy_path(args.dataset)
    run = OUT / args.dataset / "sub_k3"
    out = OUT / args.dataset / ("purify" if args.embedder == "own" else f"purify_{args.embedder}")
    truth = noisy / "noise_truth.csv"
    if args.embedder == "dlib" and args.dataset == "synthetic":
        sys.exit("dlib's detector and descriptor are for photographs; the synthetic set is scored with the own model only")
    t0 = time.perf_counter()
    if args.embedder == "own":
        purify(run, noisy, out, settings=PurifySettings(), truth=truth, overwrite=True, silent=True)
    else:
        purify_from_embeddings(noisy, dlib_embeddings(args.dataset), out, settings=PurifySettings(), truth=truth, overwrite=True, silent=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    to_merge, to_split = planted(noisy)
    merges = [g["identities"] for g in summary.get("merges", [])]
    splits = [s["identity"] for s in summary.get("splits", [])]
    result = {"dataset": args.dataset, "embedder": args.embedder, "merge": score_merges(merges, to_merge), "split": score_splits(splits, to_split),
              "images": summary["images_before"], "identities": summary["identities_before"],
              "flags": summary.get("truth", {}).get("overall"), "purify_wall_s": round(wall, 1),
              "identity_calibration": summary.get("identity_calibration"),
              "actions": summary["actions"]}
    ln.write_json(OUT / args.dataset / f"result_{args.embedder}.json", result)
    ln.log(f"{args.dataset}: merge {result['merge']} split {result['split']}")
    return result


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def step_render() -> str:
    lines = ["| set | embeddings | images / identities | merge proposals | merge P / R | split proposals | split P / R | image flags F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for d, e in [(d, e) for d in DATASETS for e in EMBEDDERS]:
        r = ln.read_json(OUT / d / f"result_{e}.json")
        if r is None:
            continue
        m, s = r["merge"], r["split"]
        f1 = r["flags"]["f1"] if r.get("flags") else None
        lines.append(f"| {d} | {EMBEDDER_TEXT[e]} | {r['images']:,} / {r['identities']} | {m['proposals']} ({m['right']} right) | "
                     f"{_f(m['precision'])} / {_f(m['recall'])} | {s['proposals']} ({s['right']} right) | "
                     f"{_f(s['precision'])} / {_f(s['recall'])} | {_f(f1)} |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("build", "purify", "render"))
    p.add_argument("--dataset", choices=DATASETS, default="lfw")
    p.add_argument("--pairs", type=int, default=10, help="merged pairs and split identities planted (each)")
    p.add_argument("--rate", type=float, default=0.2, help="image noise rate (half close-set, half open-set)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--embedder", choices=EMBEDDERS, default="own", help="purify with the own model, or from dlib's embeddings")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.step == "build":
        step_build(args)
    elif args.step == "purify":
        step_purify(args)
    else:
        step_render()


if __name__ == "__main__":
    main()
