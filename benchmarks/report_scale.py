"""The purify report at scale: 1,000,000 images of 100,000 identities, placeholder thumbnails.

A synthetic purify output directory is written first (not timed): ``decisions.csv``
with ten images per identity on average (sizes 5 to 15), K = 3 sub-centers, 85% of the
images kept at 20-60 degrees, 8% dropped above the 75-degree threshold, 3% relabelled,
2% merged, 1% dedup and 1% new identities; ``summary.json`` with 2,000 merge
candidates, 500 splits, 1,000 near-duplicate pairs and 300 outlier groups, plus truth
metrics. Then the report is rendered with ``placeholder_thumbs=True`` and measured:

* render time and peak memory of :func:`render_purify_report`;
* the report's total size and number of files (target: under 200 MB);
* the time headless Chromium takes to load ``index.html`` (navigation to the load
  event, median of ``--repeats``; target: under 2 s), and the same for a page of the
  identity table and for an identity page.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/report_scale.py --out bench-out/report_scale.json

``--images`` and ``--identities`` make smaller runs; the work folder is removed at
the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleanface.report._pages import folder_size  # noqa: E402
from cleanface.report.purify import render_purify_report  # noqa: E402

ACTIONS = ("keep", "drop", "relabel", "merge", "dedup", "new-identity")
SHARES = (0.85, 0.08, 0.03, 0.02, 0.01, 0.01)
COLUMNS = ("index", "location", "old_identity", "new_identity", "action", "reason", "angle", "nearest_subcenter",
           "dominant_subcenter", "best_other_identity", "best_other_angle")
REASONS = {"keep": "", "drop": "angle above threshold", "relabel": "closer to another identity", "merge": "identity merged",
           "dedup": "near-duplicate", "new-identity": "outlier group"}


def make_purify_dir(out: Path, images: int, identities: int, seed: int = 0, *, scores: bool = False) -> dict[str, int]:
    """Write a synthetic ``decisions.csv`` and ``summary.json`` into ``out``; return their counts.

    ``scores``: add the calibrated rule's ``noise_score`` and ``loo_angle`` columns (kept
    images Beta(1, 15): 3.5% at 0.2 or more; the others 0.5-1).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 16, identities)
    bounds = np.round(np.cumsum(sizes) * images / sizes.sum()).astype(np.int64)
    sizes = np.diff(np.concatenate([[0], bounds]))  # sums to ``images`` exactly
    labels = np.repeat(np.arange(identities), sizes)
    n = len(labels)
    action = rng.choice(len(ACTIONS), size=n, p=SHARES)
    angle = np.where(action == 0, rng.uniform(20, 60, n), rng.uniform(60, 120, n))
    angle[action == 1] = rng.uniform(75.5, 130, int((action == 1).sum()))
    dominant = rng.integers(0, 3, identities)[labels]
    nearest = np.where(rng.random(n) < 0.8, dominant, rng.integers(0, 3, n))
    other = (labels + rng.integers(1, identities, n)) % identities
    names = [f"person_{i:06d}" for i in range(identities)]
    out.mkdir(parents=True, exist_ok=True)
    score = np.where(action == 0, rng.beta(1, 15, n), rng.uniform(0.5, 1.0, n))  # kept: 3.5% at 0.2 or more
    with open(out / "decisions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS + (("noise_score", "loo_angle") if scores else ()))
        for i in range(n):
            a, c = ACTIONS[action[i]], int(labels[i])
            new = {"keep": names[c], "drop": "", "dedup": "", "relabel": names[other[i]], "merge": names[other[i]],
                   "new-identity": f"outlier-group-{i % 300 + 1}"}[a]
            row = (i, f"/data/faces/{names[c]}/{i:07d}.jpg", names[c], new, a, REASONS[a], f"{angle[i]:.4f}",
                   int(nearest[i]), int(dominant[i]), names[other[i]], f"{rng.uniform(40, 90):.4f}")
            writer.writerow(row + ((f"{score[i]:.6f}", f"{angle[i] + 2:.4f}") if scores else ()))
    counts = {a: int((action == k).sum()) for k, a in enumerate(ACTIONS)}
    kept = n - counts["drop"] - counts["dedup"]
    pick = lambda k: rng.choice(n, k, replace=False).tolist()  # noqa: E731
    summary = {
        "images_before": n, "images_after": kept, "identities_before": identities, "identities_after": identities - 1200,
        "actions": counts, "settings": {"threshold": 75.0}, "threshold": 75.0, "advised_threshold": 72.4,
        "faiss": {"subcenters": "IVF1024,Flat", "samples": "IVF4096,Flat"},
        "merges": [{"identities": [names[a], names[(a + 1) % identities]], "into": names[a], "min_angle": 31.0, "max_angle": 33.5, "merged": True}
                   for a in rng.choice(identities, min(2000, identities), replace=False).tolist()],
        "splits": [{"identity": names[a], "subcenters": [0, 1], "shares": [0.55, 0.45], "angle": 68.0, "applied": False}
                   for a in rng.choice(identities, min(500, identities), replace=False).tolist()],
        "duplicates": [{"a": a, "b": b, "cos": 0.99} for a, b in zip(pick(1000), pick(1000))],
        "outlier_groups": [{"group": g, "size": 20, "first_indices": pick(20), "identities": {names[g]: 5}} for g in range(min(300, identities))],
        "truth": {"overall": {"precision": 0.91, "recall": 0.88, "f1": 0.895, "flagged": n - counts["keep"], "noisy": int(0.14 * n), "images": n}},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return {"images": n, "identities": identities, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="Chromium loads per page (median reported).")
    parser.add_argument("--workdir", type=Path, default=None, help="Where to build the purify folder (default: a temporary folder).")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--out", type=Path, default=Path("bench-out/report_scale.json"))
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cleanface-report-scale-"))
    clean = work / "clean"
    result: dict = {"images": args.images, "identities": args.identities, "python": platform.python_version(),
                    "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        t0 = time.perf_counter()
        result["synthetic"] = make_purify_dir(clean, args.images, args.identities)
        result["synthetic_s"] = round(time.perf_counter() - t0, 2)
        print(f"synthetic purify folder: {args.images:,} images, {args.identities:,} identities in {result['synthetic_s']} s", flush=True)

        t0 = time.perf_counter()
        index = render_purify_report(clean, placeholder_thumbs=True, silent=False)
        result["render_s"] = round(time.perf_counter() - t0, 2)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        size, files = folder_size(index.parent)
        result["report_bytes"], result["report_files"] = size, files
        result["index_bytes"] = index.stat().st_size
        result["identity_pages_bytes"] = folder_size(index.parent / "identities")[0]
        result["table_and_list_pages_bytes"] = folder_size(index.parent / "pages")[0]
        result["size_target_met"] = size < 200e6
        print(f"render: {result['render_s']} s, peak RSS {result['peak_rss_mb']} MB; report {size / 1e6:.1f} MB in {files:,} files "
              f"(index.html {result['index_bytes'] / 1e3:.1f} kB)", flush=True)

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from report.browser import find_chromium, load_page  # the test suite's DevTools driver

        if find_chromium() is None:
            result["browser"] = "Chromium not found: load times not measured"
            print(result["browser"])
        else:
            pages = {"index": index, "identity_table_page": index.parent / "pages" / "identities-dropped-1.html",
                     "identity_page": index.parent / "identities" / "0.html"}
            result["load_ms"], result["dom_ms"] = {}, {}
            for name, page in pages.items():
                loads = [load_page(page, width=1280, height=900) for _ in range(max(1, args.repeats))]
                problems = [e for lp in loads for e in lp.console_errors + lp.network_requests]
                result["load_ms"][name] = round(statistics.median(lp.load_ms for lp in loads), 1)
                dom = [lp.dom_ms for lp in loads if lp.dom_ms is not None]
                result["dom_ms"][name] = round(statistics.median(dom), 1) if dom else None
                result.setdefault("page_problems", {})[name] = problems
                print(f"chromium {name}: load {result['load_ms'][name]} ms (navigation timing {result['dom_ms'][name]} ms)"
                      f"{'; problems: ' + '; '.join(problems) if problems else ''}", flush=True)
            result["load_target_met"] = result["load_ms"]["index"] < 2000
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
