"""Run the CPU benchmarks that finish in under an hour on a 2-core machine (``make bench``).

Each script writes its JSON under ``bench-out/``; this runner prints one line per script
with its wall time and stops at the first failure. Benchmarks that need LFW are skipped
with a message when ``../shared/data/lfw`` is absent. The 1M-image purify and report
scale runs (tens of minutes each) are left out; run them by hand as BENCHMARKS.md shows.
So is ``lfw_noise.py`` (label-noise flags of four methods on LFW and the verification
accuracy of models trained on the cleaned sets: 23 trainings, well over an hour here).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw"

JOBS = [
    ("index_manifest", ["benchmarks/index_manifest.py", "--out", "bench-out/index_manifest.json"], False),
    ("decode_cache", ["benchmarks/decode_cache.py", "--lfw", str(LFW), "--out", "bench-out/decode_cache.json"], True),
    ("purify_scale", ["benchmarks/purify_scale.py", "--sizes", "10000,100000", "--out", "bench-out/purify_scale.json"], False),
    ("train_throughput", ["benchmarks/train_throughput.py", "--workdir", "bench-out/throughput"], False),
    ("lfw_train", ["benchmarks/lfw_train.py", "--lfw", str(LFW), "--out", "bench-out/lfw_train"], True),
]


def main() -> int:
    (REPO / "bench-out").mkdir(exist_ok=True)
    for name, argv, needs_lfw in JOBS:
        if needs_lfw and not (LFW / "images_deepfunneled").is_dir():
            print(f"{name}: skipped (LFW not found at {LFW})")
            continue
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=REPO)
        print(f"{name}: exit {done.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
        if done.returncode != 0:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
