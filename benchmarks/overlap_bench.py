"""Overlap between two datasets: are the people planted in both found, and how fast is it at 100k x 100k identities?

``lfw``: the LFW people with at least 4 images are cut into two datasets A and B with a
known overlap: a seeded quarter of them are *shared* (their photos alternate between A and
B, so no image is in both), the others go to A or to B alone; then 100 images of A are copied
into B, each under a random identity of B (the same photograph in both sets). Each set is embedded, and
:func:`cleanface.purify.overlap.find_overlap` (what ``cleanface overlap`` runs) says which
identities of A are identities of B; the identity names are never used, only scored
against. Two embedders:

* ``--embedder dlib``: dlib's pretrained ResNet (``bench`` extra), all 610 people, the
  descriptors centred on the mean of A and B together;
* ``--embedder own``: cleanface's final model trained on the clean LFW DevTrain pool of
  ``lfw_noise.py`` (``bench-out/lfw_noise/accuracy/clean_s0/run``), on the 180 people it
  never saw (not in that pool).

``scale``: 100k identities in A and 100k in B, 512-d sums of 10 unit embeddings each, a
tenth of B's identities being A's with noise; the time of the identity search, the
rescoring and the calibration (and the peak memory of the process).

Usage::

    python benchmarks/overlap_bench.py lfw --embedder dlib
    python benchmarks/overlap_bench.py lfw --embedder own
    python benchmarks/overlap_bench.py scale --identities 100000
    python benchmarks/overlap_bench.py render

Results in ``bench-out/overlap/*.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import lfw_noise as ln  # noqa: E402

OUT = REPO / "bench-out" / "overlap"
LFW = REPO.parent / "shared" / "data" / "lfw"
OWN_RUN = REPO / "bench-out" / "lfw_noise" / "accuracy" / "clean_s0" / "run"


def lfw_people(embedder: str) -> dict[str, list[Path]]:
    """Name -> sorted image paths of the LFW people with >= 4 images (own: only those outside the model's training pool)."""
    images = LFW / "images_deepfunneled"
    if not images.is_dir():
        sys.exit(f"LFW not found at {LFW}")
    people = {}
    for folder in sorted(images.iterdir()):
        files = sorted(folder.glob("*.jpg"))
        if len(files) >= 4:
            people[folder.name] = files
    if embedder == "own":
        from cleanface.inference.run import read_run_names

        if not (OWN_RUN / "model.pt").is_file():
            sys.exit(f"{OWN_RUN} not found: run `python benchmarks/lfw_noise.py --rates 0.2 --seeds 0 --arms clean` first")
        seen = set(read_run_names(OWN_RUN))
        people = {n: f for n, f in people.items() if n not in seen}
    return people


def cut_in_two(people: dict[str, list[Path]], seed: int, share: float = 0.25, copies: int = 100):
    """Manifest rows of A and B and the shared names: a seeded ``share`` of the people in both (photos alternating);
    then ``copies`` images of A copied into B, each under a random identity of B (copied files: the same photograph)."""
    names = sorted(people)
    rng = np.random.default_rng(seed)
    shared = set(rng.choice(names, size=int(round(share * len(names))), replace=False).tolist())
    rest = [n for n in rng.permutation(names).tolist() if n not in shared]
    only_a = set(rest[0::2])
    rows_a, rows_b = [], []
    for n in names:
        files = people[n]
        if n in shared:
            rows_a += [(f, n) for f in files[0::2]]
            rows_b += [(f, n) for f in files[1::2]]
        else:
            (rows_a if n in only_a else rows_b).extend((f, n) for f in files)
    names_b = sorted({n for _, n in rows_b})
    for i in rng.choice(len(rows_a), size=min(copies, len(rows_a)), replace=False):
        rows_b.append((rows_a[i][0], names_b[int(rng.integers(len(names_b)))]))
    return rows_a, rows_b, shared


def write_manifest(rows, path: Path) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "identity"])
        w.writerows((str(f), n) for f, n in rows)
    return path


def embed(embedder: str, manifest: Path, out: Path):
    """(index, embeddings float32 (N, D)) of a manifest; dlib raw (centred later on both sets), own L2-normalised."""
    from cleanface.data.open import open_dataset

    index = open_dataset(manifest, silent=True)
    if embedder == "dlib":
        import dlib_embed

        reuse = [(p.parent / "noisy", p) for p in sorted(REPO.glob("bench-out/*/*/emb_dlib")) if (p / "embeddings.json").is_file()
                 and (p.parent / "noisy").is_dir() and "lfw" in str(p)]
        reuse += [(m, manifest.parent / f"emb_{m.stem}") for m in sorted(manifest.parent.glob("*.csv"))  # earlier cuts of this benchmark
                  if m != manifest and (manifest.parent / f"emb_{m.stem}" / "embeddings.json").is_file()]
        dlib_embed.embed_dataset(manifest, out, mode="detect", reuse=reuse, silent=True)
        return index, np.load(out / "embeddings.npy").astype(np.float32)
    from cleanface.inference.embed import embed_index
    from cleanface.inference.run import load_run

    loaded = load_run(OWN_RUN)
    cfg = loaded.config.get("settings", loaded.config)
    emb = embed_index(loaded.backbone, index, out, size=int(cfg.get("input_size", 64)), crop=cfg.get("crop", 128), silent=True)  # flip-fused, as `cleanface overlap --run`
    return index, np.asarray(emb, dtype=np.float32)


def step_lfw(args) -> dict:
    from cleanface.purify.overlap import find_overlap

    people = lfw_people(args.embedder)
    rows_a, rows_b, shared = cut_in_two(people, args.seed)
    d = OUT / args.embedder
    index_a, emb_a = embed(args.embedder, write_manifest(rows_a, d / "A.csv"), d / "emb_A")
    index_b, emb_b = embed(args.embedder, write_manifest(rows_b, d / "B.csv"), d / "emb_B")
    if args.embedder == "dlib":  # one centre for both sets, so that their embeddings stay comparable
        mean = np.vstack([emb_a, emb_b]).mean(axis=0)
        emb_a, emb_b = emb_a - mean, emb_b - mean
    t0, c0 = time.perf_counter(), time.process_time()
    found = find_overlap(emb_a, index_a.labels, index_a.num_identities, emb_b, index_b.labels, index_b.num_identities)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    names_a, names_b = list(index_a.names), list(index_b.names)
    copied = {str(f) for f, _ in rows_a} & {str(f) for f, _ in rows_b}
    pairs_found = {(index_a.location(int(i)), index_b.location(int(j))) for i, j in found.image_pairs}
    pairs_right = {p for p in pairs_found if p[0] == p[1]}
    proposed = {names_a[a] for a in np.flatnonzero(found.shared)}
    right = {names_a[a] for a in np.flatnonzero(found.shared) if names_b[found.nearest[a]] == names_a[a]}
    result = {"embedder": args.embedder, "people": len(people), "identities_a": len(names_a), "identities_b": len(names_b),
              "images_a": len(index_a), "images_b": len(index_b), "planted_shared": len(shared), "proposed": len(proposed),
              "right": len(right), "precision": len(right) / len(proposed) if proposed else None,
              "recall": len(right & shared) / len(shared), "image_pairs": int(len(found.image_pairs)), "copied_images": len(copied),
              "image_pairs_right": len(pairs_right), "copied_found": len({p[0] for p in pairs_right} & copied),
              "calibration": found.calibration, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "seed": args.seed}
    ln.write_json(OUT / f"lfw_{args.embedder}.json", result)
    ln.log(f"lfw/{args.embedder}: {result}")
    return result


def step_scale(args) -> dict:
    from cleanface.purify.identities import GroupSums, calibrate_merges, nearest_identities

    rng = np.random.default_rng(args.seed)
    c, dim, n, shared = args.identities, 512, 10, args.identities // 10

    def sums_of(directions: np.ndarray) -> GroupSums:
        # ten unit embeddings with a mean pairwise cosine of about 0.5: |S|^2 = n + n (n - 1) 0.5
        norm = np.sqrt(n + n * (n - 1) * 0.5)
        return GroupSums((directions * norm).astype(np.float32), np.full(len(directions), n, dtype=np.int64))

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a = unit(rng.standard_normal((c, dim), dtype=np.float32))
    b = unit(rng.standard_normal((c, dim), dtype=np.float32))
    b[:shared] = unit(a[:shared] + rng.standard_normal((shared, dim), dtype=np.float32) * 0.3 / np.sqrt(dim))  # cos about 0.96
    halves = np.clip(rng.normal(1.0, 0.05, size=c), 0, None)  # the same-person reference as the halves of one person give it
    t0, c0 = time.perf_counter(), time.process_time()
    nearest, q = nearest_identities(sums_of(a), sums_of(b), silent=False)
    t_search = time.perf_counter() - t0
    cal, score = calibrate_merges(q, halves)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    found = np.flatnonzero(np.nan_to_num(score) >= 0.5)
    right = int(np.sum((found < shared) & (nearest[found] == found)))
    result = {"identities_a": c, "identities_b": c, "dim": dim, "shared": shared, "found": int(len(found)), "right": right,
              "search_s": round(t_search, 1), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
              "calibration": cal.to_dict() if cal else None, "threads": os.environ.get("OMP_NUM_THREADS")}
    ln.write_json(OUT / f"scale_{c}.json", result)
    ln.log(f"scale: {result}")
    return result


def step_render() -> str:
    lines = ["| embedder | people | A / B identities | planted shared | proposed | precision | recall | copied images found | other image pairs | find_overlap time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in ("dlib", "own"):
        r = ln.read_json(OUT / f"lfw_{e}.json")
        if r:
            p = "-" if r["precision"] is None else f"{r['precision']:.2f}"
            lines.append(f"| {e} | {r['people']} | {r['identities_a']} / {r['identities_b']} | {r['planted_shared']} | {r['proposed']} | "
                         f"{p} | {r['recall']:.2f} | {r['copied_found']} of {r['copied_images']} | {r['image_pairs'] - r['image_pairs_right']} | "
                         f"{r['wall_s']:.1f} s |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("lfw", "scale", "render"))
    p.add_argument("--embedder", choices=("dlib", "own"), default="dlib")
    p.add_argument("--identities", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.step == "lfw":
        step_lfw(args)
    elif args.step == "scale":
        step_scale(args)
    else:
        step_render()


if __name__ == "__main__":
    main()
