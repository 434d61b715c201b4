"""What each sub-center looks like: real faces beside faces synthesised from the sub-centers.

For a few identities of a trained sub-center model, every sub-center is inverted to an
image with :func:`cleanface.inversion.invert` at its defaults, starting from the average
face of ``--prior-images`` images of other people (the image prior; 0: from noise). The grid has one row
per identity and, for each sub-center k, two tiles: the identity's training image nearest
to sub-center k, then the image synthesised from sub-center k. Under each pair: the
number of the identity's images whose nearest sub-center is k (votes; the most voted,
dominant sub-center is framed in green) and the cosine between the synthesised image's
embedding and the sub-center.

Modes:

* default (synthetic): draws synthetic faces with :mod:`cleanface.data.synthetic` (each
  identity's folder also holds some faces of outside people, so that non-dominant
  sub-centers have something to catch), trains a small sub-center model on them for a
  few hundred steps, then inverts; the grid goes to ``--out`` (default
  ``docs/img/inversion_demo.png``);
* ``--run RUN``: uses a trained run directory (``cleanface train-subcenter``); the
  training images are read from ``--data`` (default: the data path in the run's config);
* ``--lfw --run RUN``: the same for a run trained on LFW. Images derived from LFW must
  never enter the repository, so in this mode the grid and JSON may only be written
  under ``bench-out/``.

Prints the settings, CPU time and cosines, and writes them as JSON to ``--json``.

Usage::

    python benchmarks/invert_demo.py [--identities 4] [--steps 600] [--out docs/img/inversion_demo.png]
    python benchmarks/invert_demo.py --run RUN [--data DATASET] [--names a,b,c] [--out bench-out/inversion_run.png]
    python benchmarks/invert_demo.py --lfw --run LFW_RUN [--out bench-out/inversion_lfw.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

REPO = Path(__file__).resolve().parents[1]
BENCH_OUT = REPO / "bench-out"


@dataclass
class Model:
    backbone: nn.Module
    centers: np.ndarray  # (C, K, D) normalised sub-centers
    names: list[str]
    size: int
    images: np.ndarray  # (N, S, S, 3) uint8 training images of the shown identities (or all)
    labels: np.ndarray  # (N,) their labels
    source: str
    shown: list[str]  # identities to show
    prior: object = None  # the ImagePrior the inversion starts from (None: from noise)


# -- the synthetic demo model ---------------------------------------------------------------------
def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class DemoNet(nn.Module):
    """A small conv-BN-PReLU network, used when the project's backbone registry is not available."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, 24, 1), _block(24, 32, 2), _block(32, 48, 1), _block(48, 64, 2),
                                      _block(64, 64, 1), _block(64, 96, 2), _block(96, 128, 2))
        self.fc = nn.Linear(128 * (size // 16) ** 2, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.features(x).flatten(1)))


def _demo_backbone(dim: int, size: int) -> tuple[nn.Module, str]:
    try:
        from cleanface.models import create_backbone
    except ImportError:
        return DemoNet(dim, size), "benchmark DemoNet"
    return create_backbone("compact", embedding_size=dim, input_size=size), "compact"


def _subcenter_logits(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, classes: int, k: int, s: float, m: float) -> torch.Tensor:
    cos = (F.normalize(emb) @ F.normalize(weight).T).view(-1, classes, k).amax(dim=2).clamp(-1 + 1e-6, 1 - 1e-6)
    target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + m)
    return s * cos.scatter(1, labels[:, None], target)


def train_demo(args: argparse.Namespace, work: Path) -> Model:
    """Synthetic faces with outside faces mixed in, and a sub-center model trained on them."""
    from cleanface.data.folder import read_folder
    from cleanface.data.images import decode_image, to_tensor_batch
    from cleanface.data.synthetic import make_synthetic

    size, c, k = args.size, args.identities, args.k
    own = read_folder(make_synthetic(work / "own", identities=c, per_identity=args.per_identity, size=size, seed=args.seed, silent=True))
    other = read_folder(make_synthetic(work / "other", identities=c, per_identity=args.outside, size=size, seed=args.seed + 1,
                                       name_prefix="outside", silent=True))
    images = np.stack([decode_image(own.read_bytes(i), size=size) for i in range(len(own))]
                      + [decode_image(other.read_bytes(i), size=size) for i in range(len(other))])
    # outside person j's faces are labelled as identity j: open-set noise for every identity
    labels = np.concatenate([own.labels, other.labels]).astype(np.int64)
    torch.manual_seed(args.seed)
    backbone, source = _demo_backbone(args.dim, size)
    weight = nn.Parameter(torch.randn(c * k, args.dim) * 0.1)
    opt = torch.optim.Adam(list(backbone.parameters()) + [weight], lr=2e-3, weight_decay=5e-5)
    x, y = to_tensor_batch(images), torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(args.seed)
    backbone.train()
    for step in range(args.train_steps):
        b = torch.randint(0, len(x), (64,), generator=gen)
        xb = x[b].clone()
        flip = torch.rand(len(b), generator=gen) < 0.5
        xb[flip] = xb[flip].flip(3)
        margin = 0.3 * min(1.0, step / (0.3 * args.train_steps))  # margin warm-up
        loss = F.cross_entropy(_subcenter_logits(backbone(xb), weight, y[b], c, k, s=24.0, m=margin), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.eval()
    centers = F.normalize(weight.detach(), dim=1).view(c, k, -1).numpy()
    prior = None
    if args.prior_images:  # the average face of other synthetic people: none of the shown identities is in it
        from cleanface.inversion import ImagePrior

        per = max(2, -(-args.prior_images // 20))
        others = read_folder(make_synthetic(work / "prior", identities=20, per_identity=per, size=size, seed=args.seed + 2,
                                            name_prefix="prior", silent=True))
        prior = ImagePrior.from_images(np.stack([decode_image(others.read_bytes(i), size=size) for i in range(min(len(others), args.prior_images))]),
                                       components=args.prior_components)
    return Model(backbone, centers, list(own.names), size, images, labels, f"synthetic ({source}, {args.train_steps} training steps)",
                 list(own.names[: args.identities]), prior)


# -- a trained run ----------------------------------------------------------------------------------
def load_model(args: argparse.Namespace) -> Model:
    from cleanface.data.images import decode_image
    from cleanface.data.open import open_dataset
    from cleanface.inversion.identities import centers_of
    from cleanface.inference.run import load_run

    run = load_run(args.run, device="cpu")
    config = run.config
    data = args.data or config.get("data") or config.get("data_path")
    if not data:
        sys.exit(f"the config of {args.run} names no data path; pass --data")
    index = open_dataset(data, silent=True)
    names = args.names.split(",") if args.names else list(run.names[: args.identities])
    for name in names:
        if name not in run.names:
            sys.exit(f"identity {name!r} is not in the run {args.run}")
    in_data = [index.names.index(n) for n in names if n in index.names]
    rows = np.flatnonzero(np.isin(index.labels, in_data))
    size = int(config["input_size"])
    crop = config.get("crop")
    images = np.stack([decode_image(index.read_bytes(int(i)), size=size, crop=crop) for i in rows]) if len(rows) else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([run.names.index(index.names[int(index.labels[i])]) for i in rows], dtype=np.int64)
    prior = None
    if getattr(args, "prior_images", 0):
        from cleanface.inversion.identities import sample_image_prior

        prior = sample_image_prior(data, config, args.prior_images, seed=args.seed, components=getattr(args, "prior_components", 0))
    return Model(run.backbone.eval(), centers_of(run.head), list(run.names), size, images, labels, f"run {args.run}", names, prior)


def parse_sets(items: list[str]) -> dict:
    """``["key=value", ...]`` as keyword arguments: values read as JSON (numbers, true/false, ...), else as strings."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            sys.exit(f"--set needs key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# -- the grid ----------------------------------------------------------------------------------------
def _tile(image: np.ndarray, side: int, frame: tuple[int, int, int] | None) -> Image.Image:
    tile = Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST if image.shape[0] <= side // 2 else Image.Resampling.BICUBIC)
    if frame:
        ImageDraw.Draw(tile).rectangle([0, 0, side - 1, side - 1], outline=frame, width=3)
    return tile


def draw_grid(rows: list[dict], side: int, path: Path) -> None:
    k = len(rows[0]["pairs"])
    pad, label_w, text_h = 6, 110, 16
    width = label_w + k * (2 * side + 3 * pad) + pad
    height = len(rows) * (side + text_h + 2 * pad) + text_h + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j in range(k):
        draw.text((label_w + j * (2 * side + 3 * pad) + pad, 2), f"sub-center {j}: nearest real | synthesised", fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = text_h + pad + r * (side + text_h + 2 * pad)
        draw.text((pad, y + side // 2 - 6), row["identity"][:16], fill=(0, 0, 0))
        for j, pair in enumerate(row["pairs"]):
            x = label_w + j * (2 * side + 3 * pad) + pad
            frame = (0, 160, 0) if pair["dominant"] else None
            if pair["nearest_real"] is not None:
                canvas.paste(_tile(pair["nearest_real"], side, frame), (x, y))
            canvas.paste(_tile(pair["synthesised"], side, frame), (x + side + pad, y))
            draw.text((x, y + side + 2), f"votes {pair['votes']}  cos {pair['cos']:.3f}", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="trained run directory (default: train a synthetic demo model)")
    parser.add_argument("--data", help="dataset of the run (default: the data path in its config)")
    parser.add_argument("--names", help="comma-separated identities of the run to show")
    parser.add_argument("--lfw", action="store_true", help="the run was trained on LFW: outputs only under bench-out/")
    parser.add_argument("--identities", type=int, default=4, help="identities to show (and to draw, for the synthetic model)")
    parser.add_argument("--per-identity", type=int, default=36, help="synthetic images per identity")
    parser.add_argument("--outside", type=int, default=8, help="outside faces mixed into each synthetic identity")
    parser.add_argument("--size", type=int, default=64, help="synthetic image side")
    parser.add_argument("--dim", type=int, default=128, help="embedding size of the synthetic model")
    parser.add_argument("--k", type=int, default=3, help="sub-centers of the synthetic model")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the synthetic model")
    parser.add_argument("--steps", type=int, help="inversion steps (default: invert's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument of cleanface.inversion.invert, e.g. bn_weight=0.05 (repeatable; default: invert's defaults)")
    parser.add_argument("--prior-images", type=int, default=1000,
                        help="start from the average face of this many images (synthetic: of 20 other people; a run: of its training "
                             "set) and keep near it; 0: start from noise")
    parser.add_argument("--prior-components", type=int, default=128, help="eigenfaces of the image prior (0: a per-pixel prior)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=96, help="tile side in the grid, pixels")
    parser.add_argument("--out", type=Path, help="grid PNG (default docs/img/inversion_demo.png; bench-out/inversion_lfw.png with --lfw)")
    parser.add_argument("--json", type=Path, help="JSON results (default bench-out/invert_demo[_lfw].json)")
    args = parser.parse_args(argv)

    if args.lfw and args.run is None:
        parser.error("--lfw needs --run: a run trained on LFW")
    out = args.out or (BENCH_OUT / "inversion_lfw.png" if args.lfw else REPO / "docs" / "img" / "inversion_demo.png")
    json_out = args.json or BENCH_OUT / ("invert_demo_lfw.json" if args.lfw else "invert_demo.json")
    if args.lfw:
        for path in (out, json_out):
            if not Path(os.path.abspath(path)).is_relative_to(BENCH_OUT):
                parser.error(f"--lfw writes only under {BENCH_OUT} (images derived from LFW must stay out of the repository), not {path}")

    from cleanface.inversion import embed_images, invert

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(args) if args.run else train_demo(args, Path(tmp))
    shown = model.shown
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    labels_shown = [model.names.index(n) for n in shown]
    k = model.centers.shape[1]
    targets = np.concatenate([model.centers[c] for c in labels_shown])  # (len(shown) * K, D)
    cpu1 = time.process_time()
    settings = parse_sets(args.set)
    if model.prior is not None:
        settings["image_prior"] = model.prior
    if args.steps:
        settings["steps"] = args.steps
    result = invert(model.backbone, targets, size=model.size, seed=args.seed, device=args.device, silent=False, **settings)
    invert_cpu = time.process_time() - cpu1

    rows, records = [], []
    for r, (name, c) in enumerate(zip(shown, labels_shown)):
        own = np.flatnonzero(model.labels == c)
        emb = embed_images(model.backbone, model.images[own]) if len(own) else np.zeros((0, model.centers.shape[2]), np.float32)
        sims = emb @ model.centers[c].T  # (n, K)
        votes = np.bincount(sims.argmax(axis=1), minlength=k) if len(own) else np.zeros(k, np.int64)
        dominant = int(votes.argmax())
        pairs = []
        for j in range(k):
            m = r * k + j
            nearest = model.images[own[int(sims[:, j].argmax())]] if len(own) else None
            pairs.append({"dominant": j == dominant, "votes": int(votes[j]), "cos": float(result.final_cos[m]),
                          "synthesised": result.images[m], "nearest_real": nearest})
            records.append({"identity": name, "subcenter": j, "dominant": j == dominant, "votes": int(votes[j]),
                            "cos": round(float(result.final_cos[m]), 4),
                            "nearest_real_cos": round(float(sims[:, j].max()), 4) if len(own) else None})
        rows.append({"identity": name, "pairs": pairs})
    draw_grid(rows, args.tile, out)

    cos = result.final_cos
    summary = {
        "source": model.source, "identities": list(shown), "k": k, "image_size": model.size,
        "targets": int(len(targets)), "settings": result.settings,
        "model_seconds": round(train_wall, 2), "model_cpu_seconds": round(train_cpu, 2),
        "invert_seconds": round(result.seconds, 2), "invert_cpu_seconds": round(invert_cpu, 2),
        "mean_cos": round(float(cos.mean()), 4), "min_cos": round(float(cos.min()), 4),
        "dominant_mean_cos": round(float(np.mean([r["cos"] for r in records if r["dominant"]])), 4),
        "bn_first": round(result.history["bn"][0], 4), "bn_last": round(result.history["bn"][-1], 4),
        "bn_distance": round(result.bn_distance, 4), "subcenters": records, "grid": str(out),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"model: {model.source}; {train_wall:.1f} s wall, {train_cpu:.1f} s CPU")
    print(f"inverted {len(targets)} sub-centers ({len(shown)} identities x K={k}) at {model.size}x{model.size}, {result.settings['steps']} steps: "
          f"{result.seconds:.1f} s wall, {invert_cpu:.1f} s CPU")
    print(f"cosine to sub-center: mean {cos.mean():.3f}, min {cos.min():.3f}; dominant sub-centers mean {summary['dominant_mean_cos']:.3f}")
    print(f"BN prior: {summary['bn_first']:.2f} at the first step -> {summary['bn_last']:.2f} at the last")
    for rec in records:
        print(f"  {rec['identity']:<12} k={rec['subcenter']} {'dominant' if rec['dominant'] else '        '} votes {rec['votes']:>3}  cos {rec['cos']:.3f}")
    print(f"grid: {out}\nJSON: {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
