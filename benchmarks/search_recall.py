"""Recall of purify's approximate searches against exact search, on the synthetic data of ``purify_scale.py``.

Purify searches three ways with IVF indexes once there are more than ``exact_below``
vectors (:mod:`cleanface.purify._faiss`):

* **relabel**: each dropped image's nearest dominant sub-center of another identity;
* **merge**: each identity's nearest identity means (the calibrated merge rule rescoring
  its ``MERGE_CANDIDATES`` nearest by mean direction);
* **near-duplicates**: pairs of images at cosine >= ``dup_cos``, found when one image's
  probed cells hold the other's.

For each, this measures on a seeded sample what the IVF search finds against a
brute-force search over every vector, at several ``nprobe``:

* relabel: recall@1 of the nearest other identity, over images planted near another
  identity's sub-center (the ones the rule moves) and over random images;
* merge: the share of identities whose exact nearest identity mean is among the IVF's
  candidates;
* near-duplicates: for images paired with a copy perturbed to a cosine drawn uniformly in
  [dup_cos, 1), the share of pairs the IVF's cells bring together. The planted exact copies
  of ``purify_scale.py`` always share a cell.

::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_recall.py --size 10000000 --workdir bench-out/scale10m \\
        --out bench-out/search_recall_10m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cleanface.purify import _faiss  # noqa: E402
from cleanface.purify._threads import parallel_map, single_threaded_blas  # noqa: E402
from cleanface.purify.analysis import dominant_subcenters, nearest_subcenter, unit_rows  # noqa: E402
from cleanface.purify.neighbours import DUP_NPROBE, RELABEL_CANDIDATES, SAMPLE_STORAGE  # noqa: E402
from cleanface.purify.identities import MERGE_CANDIDATES  # noqa: E402
from cleanface.purify.settings import PurifySettings  # noqa: E402
from cleanface.purify.sharded_search import trained_centroids  # noqa: E402
from cleanface.purify.signals import identity_sums  # noqa: E402
from purify_scale import load_or_make  # noqa: E402


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Ids of the ``k`` best inner products of each query over all ``vectors`` (unit float32 rows), by brute force in blocks."""
    def one(s: int) -> np.ndarray:
        return _faiss.top_columns(queries[s : s + block] @ vectors.T, k)

    with single_threaded_blas():
        return np.concatenate(parallel_map(one, range(0, len(queries), block)))


def ivf_top(built: _faiss.BuiltIndex, queries: np.ndarray, k: int, nprobe: int) -> np.ndarray:
    """Ids of the ``k`` best of each query in the IVF index ``built`` searched with ``nprobe`` cells."""
    ivf = faiss.extract_index_ivf(built.index)
    saved, ivf.nprobe = ivf.nprobe, nprobe
    try:
        return _faiss.search(built, queries, k)[1]
    finally:
        ivf.nprobe = saved


def relabel_recall(centers, dominant, emb, labels, rows, nprobes, seed) -> dict:
    """Recall@1 of the nearest other identity's dominant sub-center for the images ``rows``."""
    has = np.flatnonzero(dominant >= 0)
    vectors = unit_rows(centers[has, dominant[has]], dtype=np.float32)
    built = _faiss.build_index(vectors, seed=seed)
    queries = unit_rows(np.asarray(emb[rows]), dtype=np.float32)
    own = labels[rows]

    def first_other(ids):
        cand = np.where(ids >= 0, has[np.maximum(ids, 0)], -1)
        usable = (cand >= 0) & (cand != own[:, None])
        return np.where(usable.any(axis=1), cand[np.arange(len(cand)), np.argmax(usable, axis=1)], -1)

    truth = first_other(exact_top(vectors, queries, RELABEL_CANDIDATES + 1))
    out = {"index": built.describe(), "queries": int(len(rows))}
    for p in nprobes:
        out[f"nprobe={p}"] = round(float(np.mean(first_other(ivf_top(built, queries, RELABEL_CANDIDATES + 1, p)) == truth)), 5)
    return out


def merge_recall(emb, labels, num_classes, sample, nprobes, seed) -> dict:
    """Share of sampled identities whose exact nearest identity mean is among the IVF's ``MERGE_CANDIDATES`` nearest."""
    directions = unit_rows(identity_sums(emb, labels, num_classes), dtype=np.float32)
    built = _faiss.build_index(directions, seed=seed)
    ids = np.sort(np.random.default_rng(seed).choice(num_classes, size=min(sample, num_classes), replace=False))
    truth = exact_top(directions, directions[ids], 2)
    truth = np.where(truth[:, 0] == ids, truth[:, 1], truth[:, 0])
    out = {"index": built.describe(), "queries": int(len(ids))}
    for p in nprobes:
        found = ivf_top(built, directions[ids], MERGE_CANDIDATES + 1, p)
        out[f"nprobe={p}"] = round(float(np.mean((found == truth[:, None]).any(axis=1))), 5)
    return out


def perturbed(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit rows at cosine ``cos`` from the unit rows ``x``, in a random direction."""
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise -= (noise * x).sum(axis=1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * noise


def duplicate_recall(emb, sample, nprobes, dup_cos, seed) -> dict:
    """Share of near-duplicate pairs (a sampled image and a copy at cosine in [dup_cos, 1)) whose cells meet at each nprobe."""
    factory, params = _faiss.choose_factory(len(emb), nprobe=DUP_NPROBE, storage=SAMPLE_STORAGE)
    centroids, _ = trained_centroids(emb, factory, params, seed)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(emb), size=min(sample, len(emb)), replace=False))
    x = unit_rows(np.asarray(emb[rows]), dtype=np.float32)
    cos = rng.uniform(dup_cos, 1.0, len(rows)).astype(np.float32)
    y = perturbed(x, cos, rng)
    top = max(nprobes)
    px, py = _faiss.nearest_cells(x, centroids, top), _faiss.nearest_cells(y, centroids, top)
    out = {"index": f"{factory} (nprobe varied)", "pairs": int(len(rows)), "cosine": [dup_cos, 1.0]}
    for p in nprobes:
        meet = (px[:, :p] == py[:, :1]).any(axis=1) | (py[:, :p] == px[:, :1]).any(axis=1)
        out[f"nprobe={p}"] = round(float(meet.mean()), 5)
        low = cos < dup_cos + 0.005
        out[f"nprobe={p} at cosine < {dup_cos + 0.005:g}"] = round(float(meet[low].mean()), 5)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="images (identities = images / 10)")
    parser.add_argument("--workdir", required=True, help="where purify_scale.py --keep keeps its embeddings (WORKDIR/scale<N>; made there when absent)")
    parser.add_argument("--sample", type=int, default=10_000, help="queries per search")
    parser.add_argument("--out", default="bench-out/search_recall.json")
    args = parser.parse_args(argv)
    settings = PurifySettings()
    t0 = time.perf_counter()
    emb, labels, centers, truth = load_or_make(args.size, Path(args.workdir) / f"scale{args.size}", centers_dtype=np.float16 if args.size >= 5_000_000 else np.float32)
    c = centers.shape[0]
    nearest, _ = nearest_subcenter(emb, labels, centers)
    dominant = dominant_subcenters(nearest, labels, c, centers.shape[1])
    rng = np.random.default_rng(settings.seed)
    planted = np.flatnonzero(truth["kind"] == 1)
    results = {
        "images": args.size, "identities": c,
        "relabel, images near another identity": relabel_recall(centers, dominant, emb, labels,
                                                                 np.sort(rng.choice(planted, args.sample, replace=False)), [4, 8, 16, 32], settings.seed),
        "relabel, random images": relabel_recall(centers, dominant, emb, labels, np.sort(rng.choice(len(labels), args.sample, replace=False)),
                                                 [4, 8, 16, 32], settings.seed),
        "merge": merge_recall(emb, labels, c, args.sample, [4, 8, 16, 32], settings.seed),
        "near-duplicates": duplicate_recall(emb, args.sample * 5, [1, 2, 4, 8], settings.dup_cos, settings.seed),
        "seconds": None,
    }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
