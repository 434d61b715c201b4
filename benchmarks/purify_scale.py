"""Purification decisions at scale: time and peak memory per stage, from 10k to 10M images.

Embeddings are random but structured like a trained sub-center model's: identities =
images / 10, K = 3 sub-centers of 512 dimensions each (random directions, so nearly
orthogonal); 80% of an identity's images lie 25-45 degrees from its dominant
sub-center, 10% near another identity's dominant sub-center (close-set noise, relabel
candidates) and 10% near one of its own non-dominant sub-centers (noise captured by
them); 0.5% of the images get an exact-ish duplicate. They are written as a float16
memmap on disk and decided on from there, as the runner does.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/purify_scale.py --sizes 10000,100000,1000000 --out bench-out/purify_scale.json

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/purify_scale.py --sizes 10000000 --centers-dtype float16 \
        --workdir bench-out --out bench-out/purify_scale_10m.json   # 10 GB of float16 on disk

Prints one line per size and stage (seconds, peak RSS while the stage ran, in all and
anonymous: the mapped float16 file's pages count in RSS but can be dropped) and writes
the figures to ``--out`` as JSON, with the CPU seconds the process used during
``decide`` and the system load average before and after it: on a shared machine, CPU
seconds / wall seconds below the core count means other processes took the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleanface.purify import shards  # noqa: E402
from cleanface.purify.decisions import decide  # noqa: E402
from cleanface.purify.settings import PurifySettings  # noqa: E402

D, K = 512, 3
CHUNK = 65_536


def rss_mb() -> dict[str, float]:
    """Resident memory of this process in MB (from /proc): ``rss`` in all, ``anon`` (heap: what must fit in RAM)
    and ``file`` (pages of mapped files such as the float16 embeddings, which the kernel can drop and re-read)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            parts = line.split()
            if parts and parts[0] in fields:
                out[fields[parts[0]]] = int(parts[1]) / 1024
    return out


class StageMemory:
    """Samples RSS every 20 ms in a thread and keeps the peak of each stage named by ``mark`` (in all and anonymous)."""

    def __init__(self) -> None:
        self.stage = "setup"
        self.peaks: dict[str, float] = {}
        self.anon_peaks: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record()
            time.sleep(0.02)

    def _record(self) -> None:
        value = rss_mb()
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), value["rss"])
        self.anon_peaks[self.stage] = max(self.anon_peaks.get(self.stage, 0.0), value["anon"])

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self._record()
        if self.stage in self.starts:
            self.seconds[self.stage] = round(self.seconds.get(self.stage, 0.0) + now - self.starts[self.stage], 3)
        self.stage = name
        self.starts[name] = now
        self._record()

    def __enter__(self) -> "StageMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_centers(rng: np.random.Generator, c: int, dtype: type) -> np.ndarray:
    """Random unit sub-centers (c, K, D) in ``dtype``, drawn block by block (the same numbers as one draw of (c, K, D))."""
    centers = np.empty((c, K, D), dtype=dtype)
    for s in range(0, c, CHUNK):
        block = rng.standard_normal((min(c, s + CHUNK) - s, K, D), dtype=np.float32)
        centers[s : s + len(block)] = block / np.linalg.norm(block, axis=2, keepdims=True)
    return centers


def make_embeddings(n: int, folder: Path, seed: int = 0, centers_dtype: type = np.float32) -> tuple[np.memmap, np.ndarray, np.ndarray, dict]:
    """Write structured float16 embeddings (n, 512) to ``folder``; return them memory-mapped, labels, centers, truth counts."""
    rng = np.random.default_rng(seed)
    c = max(2, n // 10)
    centers = make_centers(rng, c, centers_dtype)
    labels = np.sort(rng.integers(0, c, n))
    kind = rng.choice(3, size=n, p=[0.8, 0.1, 0.1])  # 0 clean, 1 close-set, 2 own non-dominant sub-center
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float16, shape=(n, D))
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        lab, kd = labels[s:e], kind[s:e]
        target = centers[lab, 0].astype(np.float32)
        close = kd == 1
        target[close] = centers[rng.integers(0, c, int(close.sum())), 0]
        own = kd == 2
        target[own] = centers[lab[own], rng.integers(1, K, int(own.sum()))]
        angle = np.radians(rng.uniform(25, 45, e - s))[:, None]
        noise = rng.standard_normal((e - s, D), dtype=np.float32)
        noise -= (noise * target).sum(axis=1, keepdims=True) * target
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        emb[s:e] = np.cos(angle) * target + np.sin(angle) * noise
    dups = rng.choice(n - 1, size=max(1, n // 200), replace=False)
    emb[dups + 1] = emb[dups]
    emb.flush()
    del emb
    truth = {"clean": int((kind == 0).sum()), "close_set": int((kind == 1).sum()), "own_non_dominant": int((kind == 2).sum()), "duplicates_planted": int(len(dups))}
    np.savez(folder / "truth.npz", labels=labels, kind=kind, duplicates_planted=len(dups))
    return np.load(folder / "embeddings.npy", mmap_mode="r"), labels, centers, truth


def load_or_make(n: int, folder: Path, centers_dtype: type = np.float32) -> tuple[np.memmap, np.ndarray, np.ndarray, dict]:
    """:func:`make_embeddings` into ``folder``, or what an earlier call left there (the same numbers: the draws are seeded).

    The sub-centers are drawn again (a few seconds); ``truth["kind"]`` holds each image's kind
    (0 clean, 1 near another identity, 2 near its own non-dominant sub-center).
    """
    folder.mkdir(parents=True, exist_ok=True)
    emb_path, truth_path = folder / "embeddings.npy", folder / "truth.npz"
    if not (emb_path.exists() and truth_path.exists() and np.load(emb_path, mmap_mode="r").shape == (n, D)):
        make_embeddings(n, folder, centers_dtype=centers_dtype)
    saved = np.load(truth_path)
    centers = make_centers(np.random.default_rng(0), max(2, n // 10), centers_dtype)  # the generator's first draws
    kind = saved["kind"]
    truth = {"clean": int((kind == 0).sum()), "close_set": int((kind == 1).sum()), "own_non_dominant": int((kind == 2).sum()),
             "duplicates_planted": int(saved["duplicates_planted"]), "kind": kind}
    return np.load(emb_path, mmap_mode="r"), saved["labels"], centers, truth


def decisions_digest(d) -> str:
    """SHA-256 over every per-image decision and every reported group: equal digests mean the same decisions, image for image."""
    h = hashlib.sha256()
    for array in (d.action, d.reason, d.new_label, d.best_other, d.outlier_group, d.duplicate_pairs):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(json.dumps([d.names, d.merges, d.splits, d.outlier_groups, d.advice], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _peak_rss_mb() -> float:
    """This process's peak RSS in MB (run on every Dask worker)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _worker_cpu() -> float:
    """This process's CPU seconds so far (run on every Dask worker)."""
    return round(cpu_seconds(), 2)


def worker_cpu(runner) -> dict[str, float]:
    """CPU seconds of each worker of a Dask runner, by address (empty for the local runner)."""
    return dict(runner.client.run(_worker_cpu)) if runner is not None and hasattr(runner, "client") else {}


def run_size(n: int, workdir: Path, settings: PurifySettings, centers_dtype: type = np.float32, runner=None, keep: bool = False) -> dict:
    t0 = time.perf_counter()
    emb, labels, centers, truth = (load_or_make(n, workdir / f"scale{n}", centers_dtype) if keep else
                                   make_embeddings(n, workdir, centers_dtype=centers_dtype))
    truth.pop("kind", None)
    generate = time.perf_counter() - t0
    load_before = os.getloadavg()
    with StageMemory() as mem:
        mem.mark("setup")
        cpu0, workers0 = cpu_seconds(), worker_cpu(runner)
        t0 = time.perf_counter()
        d = decide(emb, labels, centers, settings, silent=True, stage_hook=mem.mark, runner=runner)
        total = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        workers_cpu = sorted(round(spent - workers0.get(address, 0.0), 2) for address, spent in worker_cpu(runner).items())
        mem.mark("end")
    stages = {name: {"seconds": d.timings.get(name, mem.seconds.get(name)), "peak_rss_mb": round(mem.peaks.get(name, 0.0), 1),
                     "peak_anon_mb": round(mem.anon_peaks.get(name, 0.0), 1)} for name in d.timings}
    return {
        "images": n, "identities": int(centers.shape[0]), "k": K, "dim": D, "generate_seconds": round(generate, 2),
        "decide_seconds": round(total, 2), "decide_cpu_seconds": round(cpu, 2),
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "stages": stages, "peak_rss_mb": round(max(mem.peaks.values()), 1), "peak_anon_mb": round(max(mem.anon_peaks.values()), 1),
        "centers_dtype": np.dtype(centers_dtype).name, "embeddings_gb": round(n * D * 2 / 1e9, 2),
        "actions": d.action_counts(), "faiss": d.faiss, "outlier_clustering": d.outlier_info,
        "duplicate_pairs": int(len(d.duplicate_pairs)), "advised_threshold": d.advice["threshold"], "truth": truth,
        "decisions_sha256": decisions_digest(d),
        "runner": runner.describe() if runner is not None else {"runner": "local"},
        **({"worker_peak_rss_mb": sorted(runner.client.run(_peak_rss_mb).values()), "worker_cpu_seconds": workers_cpu}
           if runner is not None and hasattr(runner, "client") else {}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated image counts, e.g. 10000,100000,1000000")
    parser.add_argument("--out", default="bench-out/purify_scale.json", help="JSON output file")
    parser.add_argument("--workdir", default=None, help="where the float16 embeddings go (default: a temporary folder)")
    parser.add_argument("--centers-dtype", choices=["float32", "float16"], default="float32",
                        help="dtype of the sub-centers handed to decide (float16 halves them: 3 GB at 10M images)")
    parser.add_argument("--workers", type=int, default=0,
                        help="decide on a local Dask cluster of this many worker processes (cleanface.purify.shards); 0: this process alone")
    parser.add_argument("--keep", action="store_true",
                        help="keep the embeddings in WORKDIR/scale<N>/ and reuse them on the next run (needs --workdir)")
    args = parser.parse_args(argv)
    if args.keep and not args.workdir:
        parser.error("--keep needs --workdir")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    settings = PurifySettings()
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, contextlib.ExitStack() as stack:
        runner = stack.enter_context(shards.connect(workers=args.workers)) if args.workers else None
        for n in sizes:
            result = run_size(n, Path(args.workdir) if args.keep else Path(tmp), settings, centers_dtype=np.dtype(args.centers_dtype).type,
                              runner=runner, keep=args.keep)
            results.append(result)
            print(f"{n:>9} images, {result['identities']} identities: decide {result['decide_seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"({result['peak_anon_mb']:.0f} MB anonymous) "
                  f"(generation {result['generate_seconds']:.1f} s); CPU {result['decide_cpu_seconds']:.1f} s, "
                  f"load average {result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f} after", flush=True)
            for name, stage in result["stages"].items():
                print(f"           {name:<10} {stage['seconds']:>8.2f} s  {stage['peak_rss_mb']:>8.0f} MB  {stage['peak_anon_mb']:>8.0f} MB anonymous", flush=True)
            print(f"           actions {result['actions']}  faiss {result['faiss']}", flush=True)
            print(f"           decisions sha256 {result['decisions_sha256']}", flush=True)
            if "worker_peak_rss_mb" in result:
                print(f"           worker peak RSS {result['worker_peak_rss_mb']} MB, CPU {result['worker_cpu_seconds']} s", flush=True)
            if not args.keep:
                (Path(tmp) / "embeddings.npy").unlink()
                (Path(tmp) / "truth.npz").unlink()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "settings": settings.to_dict()}
    out.write_text(json.dumps({"info": info, "results": results}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
