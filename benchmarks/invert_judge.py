"""Do inverted sub-centers look like faces, and like the right person? Judged by dlib, not by the inverted model.

For the N identities with most images in a trained run (``cleanface train-subcenter``), the
dominant sub-center (the one most of the identity's images are nearest to) is inverted to an
image with :func:`cleanface.inversion.invert`. An independent face model then judges each
synthesised image:

* **face**: dlib's HOG frontal-face detector finds a face in the image, upsampled to
  ``--judge-side`` pixels (bicubic; the detector needs faces of about 80 px);
* **rank-1**: among the N judged identities, the one whose real images are nearest to the image's
  dlib descriptor on average (mean Euclidean distance) is the right one (chance: 1/N);
* **verified**: rank-1, and the descriptor is within dlib's own threshold (distance 0.6 between
  unit descriptors) of at least half of the identity's real images. The threshold alone says
  little here: dlib's descriptors of non-faces sit near the middle of its face cone, within 0.6
  of most people (``own_accept`` against ``impostor_accept``, the share of the other identities
  that would accept the image too, shows it).

The descriptor's chip comes from dlib's 5 landmarks when the detector found a face, else the
whole image is taken as the chip (the model's inputs are aligned crops). Real images go
through exactly the same judge at the model's input size, so the ceiling row ("real") is what
dlib says of each identity's real image nearest to the dominant sub-center, verified against
the identity's other images.

Beside dlib's verdict: the cosine between the synthesised image's embedding under the
inverted model and its sub-center, and the CPU time of the inversion.

dlib comes from the ``bench`` extra (``pip install -e '.[bench]'``). Images derived from LFW or
CelebA may be written only under ``bench-out/`` (``--grid``).

Usage::

    python benchmarks/invert_judge.py --run RUN [--identities 20] [--steps 600] [--set key=value ...]
        [--preset before] [--json bench-out/invert_judge.json] [--grid bench-out/invert_judge.png]

``--set`` passes keyword arguments to :func:`cleanface.inversion.invert` (numbers, true/false,
or JSON); ``--preset before`` uses the settings ``cleanface invert`` had before issue 21.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dlib_embed  # noqa: E402
from invert_demo import BENCH_OUT, draw_grid, load_model, parse_sets  # noqa: E402

#: dlib's verification threshold on the Euclidean distance between descriptors
DLIB_THRESHOLD = 0.6

#: the settings of ``invert`` before issue 21 (its defaults then)
BEFORE = {"bn_weight": 0.002, "tv_weight": 0.05, "l2_weight": 0.01, "lr": 0.1, "flip": False, "init_std": 0.5, "jitter": 2, "scale": 0.0}


class Judge:
    """dlib's detector, landmarks and descriptor network, applied to small RGB images."""

    def __init__(self, side: int) -> None:
        self.dlib = dlib_embed.DlibEmbedder(mode="detect")
        self.side = side

    def _up(self, rgb: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(rgb).resize((self.side, self.side), Image.Resampling.BICUBIC))

    def look(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (B,) bool, descriptors (B, 128)) for uint8 images (B, S, S, 3)."""
        d = self.dlib.dlib
        found, chips = [], []
        for rgb in images:
            big = np.ascontiguousarray(self._up(rgb))
            faces = self.dlib.detector(big, 0)
            if len(faces) == 0:
                faces = self.dlib.detector(big, 1)
            if len(faces):
                box = max(faces, key=lambda r: r.width() * r.height())
                chips.append(np.asarray(d.get_face_chip(big, self.dlib.shapes(big, box), size=150, padding=0.25)))
            else:
                chips.append(np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize((150, 150), Image.Resampling.BICUBIC))))
            found.append(len(faces) > 0)
        return np.array(found), self.dlib.descriptors(chips)


def reference_descriptors(judge: Judge, model, rows: list[np.ndarray], key: str) -> list[np.ndarray]:
    """dlib descriptors of each identity's real images (cached under bench-out/ by run, identities and judge side)."""
    import hashlib

    cache = BENCH_OUT / "invert_judge_cache" / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")
    if cache.is_file():
        with np.load(cache) as z:
            return [z[f"r{i}"] for i in range(len(rows))]
    refs = [judge.look(model.images[own])[1] for own in rows]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"r{i}": r for i, r in enumerate(refs)})
    return refs


def outside_prior(index, config: dict, judged: list[str], count: int, *, seed: int, components: int = 0):
    """The image prior of ``count`` training images drawn at random from identities that are not judged
    (``components`` > 0: with that many eigenfaces)."""
    from cleanface.inversion.identities import image_prior_of

    outside = np.flatnonzero(~np.isin(index.labels, [index.names.index(n) for n in judged]))
    rows = np.random.default_rng(seed).choice(outside, size=min(count, len(outside)), replace=False)
    return image_prior_of(index, rows, config, components=components)


def verdicts(found: np.ndarray, desc: np.ndarray, refs: list[np.ndarray], exclude: list[int] | None = None) -> dict:
    """Per image m (identity m): face found, verified against refs[m], rank-1 among all refs; ``exclude[m]`` drops one ref row."""
    accepts, rank1, dist_own, impostor = [], [], [], []
    for m in range(len(desc)):
        means, accepted = [], []
        for j, ref in enumerate(refs):
            r = ref if exclude is None or j != m else np.delete(ref, exclude[m], axis=0)
            dist = np.linalg.norm(r - desc[m], axis=1)
            means.append(float(dist.mean()) if len(dist) else np.inf)
            accepted.append(bool(len(dist) and (dist < DLIB_THRESHOLD).mean() >= 0.5))
        accepts.append(accepted[m])
        rank1.append(int(np.argmin(means)) == m)
        dist_own.append(means[m])
        impostor.append(float(np.mean([a for j, a in enumerate(accepted) if j != m])) if len(refs) > 1 else 0.0)
    verified = [a and r for a, r in zip(accepts, rank1)]
    return {"face": float(np.mean(found)), "verified": float(np.mean(verified)), "rank1": float(np.mean(rank1)),
            "own_accept": float(np.mean(accepts)), "impostor_accept": float(np.mean(impostor)),
            "mean_dist_own": float(np.mean(dist_own)), "per_image": [
                {"face": bool(f), "verified": v, "rank1": r, "dist_own": round(d, 4)} for f, v, r, d in zip(found, verified, rank1, dist_own)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="trained sub-center run directory")
    parser.add_argument("--data", help="dataset of the run (default: the data path in its config)")
    parser.add_argument("--identities", type=int, default=20, help="identities judged (those with most images)")
    parser.add_argument("--steps", type=int, help="inversion steps (default: invert's)")
    parser.add_argument("--preset", choices=("before", "default"), default="default", help="'before': the settings before issue 21")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a keyword argument of invert (repeatable)")
    parser.add_argument("--image-prior", type=int, default=0, metavar="N",
                        help="use an image prior of N training images of identities that are not judged (0: none)")
    parser.add_argument("--components", type=int, default=0, help="eigenfaces of the image prior (0: per-pixel prior)")
    parser.add_argument("--judge-side", type=int, default=256, help="side the images are upsampled to for dlib's detector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="results (default bench-out/invert_judge.json)")
    parser.add_argument("--grid", type=Path, help="a grid of nearest real | synthesised images (under bench-out/ only)")
    args = parser.parse_args(argv)
    json_out = args.json or BENCH_OUT / "invert_judge.json"
    for path in (json_out, args.grid):
        if path is not None and not Path(os.path.abspath(path)).is_relative_to(BENCH_OUT):
            parser.error(f"outputs go under {BENCH_OUT} (images derived from real faces stay out of the repository), not {path}")

    from cleanface.data.open import open_dataset
    from cleanface.inference.run import load_run
    from cleanface.inversion import embed_images, invert

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    run = load_run(args.run, device="cpu")
    data = args.data or run.config.get("data")
    index = open_dataset(data, silent=True)
    counts = np.bincount(index.labels, minlength=len(index.names))
    by_size = [index.names[i] for i in np.argsort(-counts, kind="stable") if index.names[i] in run.names]
    names = by_size[: args.identities]
    model = load_model(argparse.Namespace(run=args.run, data=data, names=",".join(names), identities=len(names)))

    targets, nearest_rows, refs_rows = [], [], []
    for name in names:
        c = model.names.index(name)
        own = np.flatnonzero(model.labels == c)
        sims = embed_images(model.backbone, model.images[own]) @ model.centers[c].T
        dominant = int(np.bincount(sims.argmax(axis=1), minlength=sims.shape[1]).argmax())
        targets.append(model.centers[c, dominant])
        nearest_rows.append(int(np.argmax(sims[:, dominant])))
        refs_rows.append(own)
    targets = np.stack(targets)

    settings = dict(BEFORE) if args.preset == "before" else {}
    settings.update(parse_sets(args.set))
    if args.steps:
        settings["steps"] = args.steps
    if args.image_prior:
        settings["image_prior"] = outside_prior(index, run.config, names, args.image_prior, seed=args.seed, components=args.components)
    cpu0 = time.process_time()
    result = invert(model.backbone, targets, size=model.size, seed=args.seed, silent=False, **settings)
    invert_cpu = time.process_time() - cpu0

    judge = Judge(args.judge_side)
    t0 = time.perf_counter()
    refs = reference_descriptors(judge, model, refs_rows, key=f"{Path(args.run).resolve()}|{','.join(names)}|{args.judge_side}")
    found, desc = judge.look(result.images)
    synth = verdicts(found, desc, refs)
    real_images = np.stack([model.images[own[j]] for own, j in zip(refs_rows, nearest_rows)])
    rfound, rdesc = judge.look(real_images)
    real = verdicts(rfound, rdesc, refs, exclude=nearest_rows)
    average = None
    if args.image_prior:  # the starting point alone: the same average face for every identity
        from cleanface.data.images import to_uint8

        face = to_uint8(settings["image_prior"].at(model.size).mean[None])
        afound, adesc = judge.look(np.repeat(face, len(names), axis=0))
        average = verdicts(afound, adesc, refs)
    judge_s = time.perf_counter() - t0

    cos = result.final_cos
    summary = {
        "run": str(args.run), "identities": names, "images_per_identity": [int(len(o)) for o in refs_rows],
        "image_size": model.size, "settings": result.settings, "preset": args.preset, "image_prior_images": args.image_prior, "image_prior_components": args.components,
        "invert_seconds": round(result.seconds, 2), "invert_cpu_seconds": round(invert_cpu, 2), "judge_seconds": round(judge_s, 2),
        "cos_mean": round(float(cos.mean()), 4), "cos_min": round(float(cos.min()), 4), "bn_distance": round(result.bn_distance, 3),
        "synthesised": {k: v for k, v in synth.items() if k != "per_image"}, "real": {k: v for k, v in real.items() if k != "per_image"},
        "average_face": None if average is None else {k: v for k, v in average.items() if k != "per_image"},
        "per_identity": [{"identity": n, "cos": round(float(c), 4), **s, "real": r}
                         for n, c, s, r in zip(names, cos, synth["per_image"], real["per_image"])],
        "threads": torch.get_num_threads(), "judge": f"dlib HOG detector + {dlib_embed.MODEL}, threshold {DLIB_THRESHOLD}, side {args.judge_side}",
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.grid:
        rows = [{"identity": n, "pairs": [{"dominant": True, "votes": int(len(o)), "cos": float(c), "synthesised": img, "nearest_real": real_img}]}
                for n, o, c, img, real_img in zip(names, refs_rows, cos, result.images, real_images)]
        draw_grid(rows, 96, args.grid)
    print(f"{len(names)} dominant sub-centers of {args.run} at {model.size}x{model.size}; settings {json.dumps(result.settings)}")
    print(f"inversion {result.seconds:.1f} s wall, {invert_cpu:.1f} s CPU; cosine mean {cos.mean():.3f} min {cos.min():.3f}; R_bn {result.bn_distance:.1f}")
    for label, v in (("synthesised", synth), ("real (ceiling)", real), ("average face", average)):
        if v is None:
            continue
        print(f"{label:<15} face {v['face']:.2f}  verified {v['verified']:.2f}  rank-1 {v['rank1']:.2f}  "
              f"accepted by own {v['own_accept']:.2f} / by others {v['impostor_accept']:.2f}  mean distance to own {v['mean_dist_own']:.3f}")
    print(f"JSON: {json_out}" + (f"; grid: {args.grid}" if args.grid else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
