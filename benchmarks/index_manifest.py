"""Index a large CSV manifest: seconds and peak memory.

Generates a manifest of ``--rows`` rows (default 1,000,000; paths need not exist, so
file checks are off), indexes it with :func:`cleanface.data.manifest.read_manifest`,
and reports the time, the growth of the process's peak resident memory (``ru_maxrss``)
during indexing, the peak allocation seen by tracemalloc in a second run (numpy buffers
included) and the size of the resulting index. Prints the result and writes it as JSON to ``--out``.

Usage::

    python benchmarks/index_manifest.py [--rows 1000000] [--identities 100000] [--out bench-out/index_manifest.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def make_manifest(path: Path, rows: int, identities: int, seed: int = 0) -> None:
    """Write ``rows`` rows ``<identity>/<nnnnnnnn>.jpg,<identity>``, identities in random order."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, identities, size=rows)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("path,identity\n")
        for start in range(0, rows, 100_000):
            chunk = labels[start : start + 100_000].tolist()
            handle.write("".join(f"id{c:07d}/{start + k:08d}.jpg,id{c:07d}\n" for k, c in enumerate(chunk)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--out", default="bench-out/index_manifest.json")
    args = parser.parse_args()

    from cleanface.data.manifest import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "manifest.csv"
        make_manifest(csv_path, args.rows, args.identities)
        csv_bytes = csv_path.stat().st_size
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        index = read_manifest(csv_path, check_files=False, silent=True)
        seconds = time.perf_counter() - start
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # a second run under tracemalloc (slower: it records every allocation) for the allocation peak
        del index
        gc.collect()
        tracemalloc.start()
        start = time.perf_counter()
        index = read_manifest(csv_path, check_files=False, silent=True)
        seconds_traced = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    index_bytes = index.paths.blob.nbytes + index.paths.offsets.nbytes + index.labels.nbytes
    result = {
        "benchmark": "index_manifest",
        "rows": args.rows,
        "identities_requested": args.identities,
        "images": len(index),
        "identities": index.num_identities,
        "csv_mb": round(csv_bytes / 2**20, 1),
        "seconds": round(seconds, 3),
        "seconds_traced": round(seconds_traced, 3),
        "rows_per_second": round(args.rows / seconds),
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 1),
        "index_mb": round(index_bytes / 2**20, 1),
        "maxrss_before_mb": round(rss_before / 1024, 1),
        "maxrss_after_mb": round(rss_after / 1024, 1),
        "maxrss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
