"""Does cleanface find injected label noise on real faces, and does cleaning pay? LFW, four methods.

Training pool: the people of ``peopleDevTrain.txt`` with at least 4 images (430 people,
4,964 images); DevTrain people with 1-3 images are the outside faces for open-set noise.
For each noise rate r, ``inject_noise`` writes a noisy copy with r/2 close-set and r/2
open-set images (fractions of the output images), one merged pair and one split identity,
and ``noise_truth.csv``. On that one noisy set four methods flag images:

a. ``cleanface``: sub-center ArcFace K=3, then ``purify`` with default settings; an image is
   flagged when its action is not ``keep`` (drop, relabel, merge, new-identity, dedup);
b. ``angle-k1``: ArcFace K=1 on the same set; flagged when the angle to the own class
   centre is above the purify threshold (75 degrees by default);
c. ``cleanlab``: ``cleanlab.filter.find_label_issues`` on out-of-sample probabilities
   (softmax of scale x cosine to the class centres) from ArcFace K=1 with the same backbone,
   trained by stratified cross-validation;
d. ``knn-vote``: on the K=1 embeddings, flagged when more than half of the k nearest
   neighbours carry another label.

Flags are scored with :func:`cleanface.purify.outputs.truth_metrics` (the scoring behind
``purify --truth``): overall, and per noise type on the images that are clean or of that type.

Does cleaning pay? (at one rate, ``--accuracy-rate``): the final model (ElasticFace-Arc+, same backbone
and schedule) is trained on the noisy set, on cleanface's purified set, on the clean pool,
and on the noisy set minus the flags of the best baseline (by F1), for each seed; each is
evaluated on ``pairsDevTest.txt`` (identity-disjoint, 10-fold accuracy).

Usage::

    python benchmarks/lfw_noise.py [--lfw ../shared/data/lfw] [--out bench-out/lfw_noise]
    python benchmarks/lfw_noise.py --quick             # 40 identities, 2 epochs: a smoke run
    python benchmarks/lfw_noise.py --render-only       # tables and SVGs from the JSON files

On a crowded machine the work can be shared by several processes on the same ``--out``
(each keeps its own ``timings_*.json``), one torch thread each::

    python benchmarks/lfw_noise.py --rates 0.2 --seeds 0 --arms noisy,cleanface --threads 1
    python benchmarks/lfw_noise.py --flags-only --rates 0.4 --threads 1
    python benchmarks/lfw_noise.py --cv-only --rates 0.4 --threads 1   # its cleanlab folds, beside it
    python benchmarks/lfw_noise.py --k1-only --rates 0.4 --threads 1   # its ArcFace K=1 run, beside it

A process that reaches a run another one is training stops with a lock error; start it
again once the other is done (finished runs are skipped).

Resumable: every noisy set, training run, purify output and embedding lives in its own
sub-directory of ``--out`` and is skipped when complete (an interrupted training resumes
from its last epoch checkpoint). Numbers go to ``OUT/rate_XX/flags.json``,
``OUT/rate_XX/diagnostics.json`` (threshold and k sweeps on the saved embeddings),
``OUT/accuracy/ARM_sSEED/eval.json``, ``OUT/accuracy.json`` and the wall time of every step
to ``OUT/timings*.json``; ``OUT/tables.md`` and the SVG charts (``--svg-dir``, default
``docs/img``) are rendered from them.
Exits with a message when LFW is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("cleanface", "angle-k1", "cleanlab", "knn-vote")
BASELINES = METHODS[1:]
TYPES = ("close-set", "open-set", "merged", "split")
ARMS = ("noisy", "cleanface", "clean", "baseline")
ARM_TEXT = {"noisy": "(i) noisy set", "cleanface": "(ii) cleanface purified", "clean": "(iii) truly clean pool", "baseline": "(iv) best baseline cleaned"}


# -- small utilities --------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    from cleanface._atomic import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


class Timings:
    """Wall and CPU seconds of every step that did work, kept in ``OUT/timings.json`` across resumed runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_json(path) or {"steps": {}}

    def step(self, name: str):
        timings = self

        class _Step:
            def __enter__(self):
                self.t0, self.c0 = time.perf_counter(), time.process_time()
                log(f"{name} ...")

            def __exit__(self, kind, *_):
                if kind is None:
                    wall = round(time.perf_counter() - self.t0, 1)
                    timings.data["steps"][name] = {"wall_s": wall, "cpu_s": round(time.process_time() - self.c0, 1),
                                                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    write_json(timings.path, timings.data)
                    log(f"{name} done in {wall:.0f} s")

        return _Step()


def rate_tag(rate: float) -> str:
    return f"rate_{int(round(rate * 100)):02d}"


# -- data ------------------------------------------------------------------------------------------------
def build_pool(root: Path, out: Path, quick: bool):
    """The training pool (DevTrain, >= 4 images) and the outside faces (DevTrain, 1-3 images), saved as .npz."""
    from cleanface.data.index import DatasetIndex
    from cleanface.data.lfw import lfw_index

    pool_path, outside_path = out / "pool.npz", out / "outside.npz"
    if pool_path.is_file() and outside_path.is_file():
        return DatasetIndex.load(pool_path), DatasetIndex.load(outside_path)
    everyone = lfw_index(root / "images_deepfunneled", root / "peopleDevTrain.txt", min_images=1)
    counts = everyone.counts()
    in_pool = counts[everyone.labels] >= 4
    if quick:  # the first 40 pool identities by name
        chosen = np.flatnonzero(counts >= 4)[:40]
        in_pool &= np.isin(everyone.labels, chosen)
    pool = everyone.subset(np.flatnonzero(in_pool))
    outside = everyone.subset(np.flatnonzero(counts[everyone.labels] < 4))
    out.mkdir(parents=True, exist_ok=True)
    pool.save(pool_path)
    outside.save(outside_path)
    return pool, outside


def noisy_set(pool, outside, rate_dir: Path, rate: float, seed: int, timings: Timings, open_set: float | None = None) -> Path:
    """The noisy copy at ``rate``: half close-set, half open-set unless ``open_set`` is given (the rest close-set)."""
    from cleanface.data.noise import inject_noise

    dst = rate_dir / "noisy"
    open_set = rate / 2 if open_set is None else open_set
    if not (dst / "noise.json").is_file():  # inject_noise renames its staging folder into place when done
        with timings.step(f"{rate_dir.name}/inject-noise"):
            inject_noise(pool, dst, close_set=rate - open_set, open_set=open_set, outside=outside, merge_identities=1,
                         split_identities=1, seed=seed, overwrite=True)
    return dst


def open_noisy(noisy: Path, names: list[str]):
    """The noisy folder's index in the label order of a run trained on it, and its aligned truth."""
    from cleanface.data.noise import align_truth, read_truth
    from cleanface.data.open import open_dataset
    from cleanface.purify.runner import match_run

    index = match_run(open_dataset(noisy, silent=True), names, "run", noisy)
    return index, align_truth(read_truth(noisy), index)


# -- training, embedding ---------------------------------------------------------------------------------
def train_settings(args, seed: int, epochs: int | None = None) -> dict:
    return dict(backbone="compact", input_size=64, embedding_size=128, crop=128, epochs=epochs or args.epochs,
                batch_size=64, lr=0.1, scale=32.0, margin=0.3, grad_clip=0, seed=seed, device="cpu",
                cache_dir=str(Path(args.out) / "cache"))


def trained(run: Path, data, timings: Timings, name: str, *, head: str, settings: dict, k: int = 1) -> Path:
    """Train (or resume, or skip when complete) one run."""
    from cleanface._atomic import is_complete
    from cleanface.training.trainer import train_final, train_subcenter

    if is_complete(run):
        return run
    with timings.step(name):
        if head == "subcenter-arcface":
            train_subcenter(data, run, k=k, resume=True, silent=True, **settings)
        else:
            train_final(data, run, loss=head, resume=True, silent=True, **settings)
    return run


def embeddings(run: Path, index, out_dir: Path, timings: Timings, name: str, crop: int | None = 128) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) of ``index`` (no flip, as purify embeds by default) and the run's class centres (C, K, D)."""
    from cleanface.purify.analysis import l2_normalize
    from cleanface.inference.embed import embed_index
    from cleanface.inference.run import load_run

    loaded = load_run(run)
    if list(loaded.names) != list(index.names):
        raise SystemExit(f"{run}: identities differ from the dataset's; delete {run} and run again")
    done = (out_dir / "embeddings.json").is_file()
    if done:
        emb = embed_index(loaded.backbone, index, out_dir, size=64, crop=crop, flip=False, silent=True)
    else:
        with timings.step(name):
            emb = embed_index(loaded.backbone, index, out_dir, size=64, crop=crop, flip=False, silent=True)
    centers = loaded.head.class_centers().detach().cpu().float().numpy()
    return np.asarray(emb, dtype=np.float32), l2_normalize(centers)


# -- the four methods -------------------------------------------------------------------------------------
def flags_cleanface(args, rate_dir: Path, noisy: Path, timings: Timings) -> tuple[np.ndarray, dict]:
    from cleanface._atomic import is_complete
    from cleanface.purify.runner import purify
    from cleanface.purify.settings import PurifySettings

    run = trained(rate_dir / "sub_k3", noisy, timings, f"{rate_dir.name}/train-subcenter-k3", head="subcenter-arcface",
                  settings=train_settings(args, 0), k=3)
    out = rate_dir / "purify"
    if not is_complete(out):
        with timings.step(f"{rate_dir.name}/purify"):
            purify(run, noisy, out, settings=PurifySettings(), truth=noisy / "noise_truth.csv", overwrite=True, silent=True)
    from cleanface.data.noise import align_truth, read_truth
    from cleanface.data.open import open_dataset
    from cleanface.purify.runner import match_run, read_run_names

    index = match_run(open_dataset(noisy, silent=True), read_run_names(run), run, noisy)
    rows = read_decisions(out / "decisions.csv", len(index))
    summary = json.loads((out / "summary.json").read_text())
    flagged = rows != "keep"
    truth = align_truth(read_truth(noisy), index)
    return flagged, {"summary": summary, "actions": summary["actions"], "index": index, "truth": truth}


def read_decisions(path: Path, n: int) -> np.ndarray:
    """The ``action`` column of ``decisions.csv`` in index order: str (N,)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        actions = np.empty(n, dtype=object)
        for row in reader:
            if row["index"]:  # rows without an index are files indexing set aside
                actions[int(row["index"])] = row["action"]
    return actions.astype(str)


def knn_vote(emb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """True where more than half of the k nearest neighbours (cosine, self excluded) carry another label."""
    n = len(emb)
    other = np.zeros(n, dtype=np.int64)
    for start in range(0, n, 2048):
        sims = emb[start : start + 2048] @ emb.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        nbrs = np.argpartition(-sims, k, axis=1)[:, :k]
        other[start : start + len(rows)] = (labels[nbrs] != labels[start : start + len(rows), None]).sum(axis=1)
    return other > k / 2


def cleanlab_probs(args, rate_dir: Path, index, timings: Timings, crop: int | None = 128) -> np.ndarray:
    """Out-of-sample probabilities (N, C) from stratified ``--cv-folds``-fold cross-validation of ArcFace K=1."""
    from scipy.special import softmax
    from sklearn.model_selection import StratifiedKFold

    path = rate_dir / "cv" / "pred_probs.npy"
    if path.is_file():
        return np.load(path)
    import warnings

    probs = np.zeros((len(index), index.num_identities), dtype=np.float32)
    with warnings.catch_warnings():  # a class with fewer images than folds is allowed (it trains in some folds only)
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(args.cv_folds, shuffle=True, random_state=0).split(np.zeros(len(index)), index.labels))
    settings = {**train_settings(args, 0, epochs=args.cv_epochs), "crop": crop}
    for f, (tr, te) in enumerate(splits):
        fold = rate_dir / "cv" / f"fold{f}"
        fold.mkdir(parents=True, exist_ok=True)
        train_index = index.subset(tr, renumber=False)  # every identity kept, so the head's classes line up
        train_index.save(fold / "train.npz")
        run = trained(fold / "run", fold / "train.npz", timings, f"{rate_dir.name}/cleanlab-fold{f}", head="arcface", settings=settings)
        held = index.subset(te, renumber=False)
        emb, centers = embeddings(run, held, fold / "emb", timings, f"{rate_dir.name}/cleanlab-fold{f}-embed", crop=crop)
        probs[te] = softmax(settings["scale"] * (emb @ centers[:, 0, :].T), axis=1)
    np.save(path, probs)
    return probs


def score(flagged: np.ndarray, truth: dict) -> dict:
    """Overall metrics and, per noise type, metrics on the images that are clean or of that type."""
    from cleanface.purify.outputs import truth_metrics

    out = truth_metrics(flagged, truth)
    per = {}
    for t in TYPES:
        sel = (truth["noise_type"] == "clean") | (truth["noise_type"] == t)
        if (truth["noise_type"] == t).any():
            per[t] = truth_metrics(flagged[sel], {k: v[sel] for k, v in truth.items()})["overall"]
    out["per_type_prf"] = per
    return out


def identity_level(summary: dict, noise: dict) -> dict:
    """Did purify notice the merged pair (reported as a split candidate) and the split identity (merged back)?"""
    kept, absorbed = noise["merges"][0]
    original, split_name = noise["splits"][0]
    merges = summary.get("merges", [])
    merged_back = any({original, split_name} <= set(g["identities"]) for g in merges)
    merged_found = any(s["identity"] == kept for s in summary.get("splits", []))
    wrong_merges = [g for g in merges if not {original, split_name} <= set(g["identities"])]
    return {"merged_pair": [kept, absorbed], "merged_pair_reported_as_split": merged_found,
            "split_identity": [original, split_name], "split_identity_merged_back": merged_back,
            "merge_groups": len(summary.get("merges", [])), "other_merge_groups": len(wrong_merges),
            "split_candidates": len(summary.get("splits", []))}


def flag_rate(args, pool, outside, rate: float, timings: Timings) -> dict:
    """Run the four methods at one noise rate; write and return ``rate_XX/flags.json``."""
    rate_dir = Path(args.out) / rate_tag(rate)
    result_path = rate_dir / "flags.json"
    done = read_json(result_path)
    if done is not None:
        return done
    t0 = time.perf_counter()
    noisy = noisy_set(pool, outside, rate_dir, rate, args.noise_seed, timings)
    noise = json.loads((noisy / "noise.json").read_text())
    flagged_a, info = flags_cleanface(args, rate_dir, noisy, timings)
    index, truth = info["index"], info["truth"]
    from cleanface.purify.settings import PurifySettings

    threshold = PurifySettings().threshold
    run_k1 = trained(rate_dir / "arc_k1", noisy, timings, f"{rate_dir.name}/train-arcface-k1", head="arcface", settings=train_settings(args, 0))
    emb, centers = embeddings(run_k1, index, rate_dir / "emb_k1", timings, f"{rate_dir.name}/embed-k1")
    cos = np.einsum("nd,nd->n", emb, centers[index.labels, 0, :])
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    flagged_b = angle > threshold
    probs = cleanlab_probs(args, rate_dir, index, timings)
    from cleanlab.filter import find_label_issues

    flagged_c = np.asarray(find_label_issues(index.labels, probs, n_jobs=1), dtype=bool)
    flagged_d = knn_vote(emb, index.labels, args.knn)
    flags = {"cleanface": flagged_a, "angle-k1": flagged_b, "cleanlab": flagged_c, "knn-vote": flagged_d}
    np.savez(rate_dir / "flags.npz", **{m.replace("-", "_"): f for m, f in flags.items()}, noise_type=truth["noise_type"])
    result = {
        "rate": rate, "noise": {"images": noise["images"], "identities": noise["identities"], "counts": noise["counts"],
                                "merges": noise["merges"], "splits": noise["splits"], "seed": args.noise_seed},
        "settings": {"train": train_settings(args, 0), "cv_folds": args.cv_folds, "cv_epochs": args.cv_epochs, "knn": args.knn,
                     "threshold": threshold, "purify": "PurifySettings() defaults"},
        "methods": {m: score(f, truth) for m, f in flags.items()},
        "cleanface_actions": info["actions"],
        "cleanface_identity_level": identity_level(info["summary"], noise),
        "purify_summary_truth": info["summary"].get("truth", {}).get("overall"),
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
    }
    write_json(result_path, result)
    diagnostics(args, rate)
    f1 = {m: round(v["overall"]["f1"], 3) for m, v in result["methods"].items()}
    log(f"{rate_dir.name}: F1 {f1}")
    return result


def diagnostics(args, rate: float) -> dict | None:
    """What would change the ranking: threshold and k sweeps, cleanlab's out-of-sample accuracy; ``rate_XX/diagnostics.json``.

    Computed from what :func:`flag_rate` saved (embeddings, ``analysis.npz``, ``pred_probs.npy``); no training.
    """
    from cleanface.data.noise import read_truth, align_truth
    from cleanface.data.open import open_dataset
    from cleanface.purify.outputs import truth_metrics
    from cleanface.purify.runner import match_run, read_run_names
    from cleanface.inference.run import load_run

    rate_dir = Path(args.out) / rate_tag(rate)
    path = rate_dir / "diagnostics.json"
    if path.is_file():
        return read_json(path)
    if not (rate_dir / "flags.json").is_file():
        return None
    noisy = rate_dir / "noisy"
    index = match_run(open_dataset(noisy, silent=True), read_run_names(rate_dir / "arc_k1"), "run", noisy)
    truth = align_truth(read_truth(noisy), index)
    prf = lambda f: {k: v for k, v in truth_metrics(f, truth)["overall"].items() if k in ("precision", "recall", "f1", "flagged")}  # noqa: E731
    emb = np.asarray(np.load(rate_dir / "emb_k1" / "embeddings.npy"), dtype=np.float32)
    centers = load_run(rate_dir / "arc_k1").head.class_centers().detach().float().numpy()[:, 0, :]
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    angle_k1 = np.degrees(np.arccos(np.clip(np.einsum("nd,nd->n", emb, centers[index.labels]), -1, 1)))
    analysis = np.load(rate_dir / "purify" / "analysis.npz")
    angle_k3 = np.nan_to_num(analysis["angle"], nan=180.0)
    summary = json.loads((rate_dir / "purify" / "summary.json").read_text())
    probs = np.load(rate_dir / "cv" / "pred_probs.npy")
    clean = truth["noise_type"] == "clean"
    thresholds = [55, 60, 65, 70, 75, 80]
    out = {
        "rate": rate,
        "angle_k1_by_threshold": {str(t): prf(angle_k1 > t) for t in thresholds},
        "cleanface_angle_only_by_threshold": {str(t): prf(angle_k3 > t) for t in thresholds},
        "cleanface_advised_threshold": summary.get("advised_threshold"),
        "cleanface_angle_only_at_advised": prf(angle_k3 > summary["advised_threshold"]) if summary.get("advised_threshold") else None,
        "knn_vote_by_k": {str(k): prf(knn_vote(emb, index.labels, k)) for k in (3, 5, 10)},
        "cleanlab_oos_top1_accuracy_clean": float((probs[clean].argmax(1) == index.labels[clean]).mean()),
        "cleanlab_oos_mean_max_prob": float(probs.max(1).mean()),
        "images_per_identity_median": float(np.median(np.bincount(index.labels))),
        "identities_below_6_images": int((np.bincount(index.labels) < 6).sum()),
    }
    write_json(path, out)
    return out


# -- item 2: does cleaning pay? ----------------------------------------------------------------------------
def accuracy_arm(args, root: Path, arm: str, seed: int, data, timings: Timings, *, pairs: Path | None = None,
                 images_root: Path | None = None, crop: int | None = 128, head: str = "elastic-arc+", k: int = 1) -> dict:
    """ElasticFace-Arc+ (or ``head`` with ``k`` sub-centers) on ``data``, verified on ``pairs`` (LFW's pairsDevTest by default) at the given crop."""
    from cleanface.eval.pairs import evaluate
    from cleanface.inference.run import load_run

    arm_dir = Path(args.out) / "accuracy" / f"{arm}_s{seed}"
    done = read_json(arm_dir / "eval.json")
    if done is not None:
        return done
    settings = {**train_settings(args, seed), "crop": crop}
    run = trained(arm_dir / "run", data, timings, f"accuracy/{arm}_s{seed}/train", head=head, settings=settings, k=k)
    with timings.step(f"accuracy/{arm}_s{seed}/evaluate"):
        loaded = load_run(run)
        res = evaluate(loaded.backbone, pairs or root / "pairsDevTest.txt", images_root=images_root or root / "images_deepfunneled", size=64, crop=crop)
    from cleanface.data.open import open_dataset

    index = open_dataset(data, silent=True)
    out = {"arm": arm, "seed": seed, "data": str(data), "images": len(index), "identities": index.num_identities,
           "accuracy": res["accuracy"], "accuracy_std_folds": res["accuracy_std"], "auc": res["auc"], "tar_at_far": res["tar_at_far"]}
    write_json(arm_dir / "eval.json", out)
    log(f"accuracy {arm} seed {seed}: {out['accuracy']:.4f}")
    return out


def arm_data(args, arm: str, flags: dict) -> tuple[Path, str | None]:
    rate_dir = Path(args.out) / rate_tag(args.accuracy_rate)
    if arm == "noisy":
        return rate_dir / "noisy", None
    if arm == "cleanface":
        return rate_dir / "purify" / "data", None
    if arm == "clean":
        return Path(args.out) / "pool.npz", None
    best = max(BASELINES, key=lambda m: flags["methods"][m]["overall"]["f1"])
    path = rate_dir / f"cleaned_{best}.npz"
    if not path.is_file():
        z = np.load(rate_dir / "flags.npz")
        from cleanface.data.open import open_dataset
        from cleanface.purify.runner import read_run_names, match_run

        index = match_run(open_dataset(rate_dir / "noisy", silent=True), read_run_names(rate_dir / "arc_k1"), "run", rate_dir / "noisy")
        index.subset(np.flatnonzero(~z[best.replace("-", "_")]), renumber=True).save(path)
    return path, best


def accuracy(args, root: Path, seeds: list[int], timings: Timings) -> None:
    flags = read_json(Path(args.out) / rate_tag(args.accuracy_rate) / "flags.json")
    for seed in seeds:
        for arm in args.arms.split(","):
            data, _ = arm_data(args, arm, flags)
            accuracy_arm(args, root, arm, seed, data, timings)


def collect_accuracy(args) -> dict | None:
    flags = read_json(Path(args.out) / rate_tag(args.accuracy_rate) / "flags.json")
    if flags is None:
        return None
    arms = {}
    for arm in ARMS:
        runs = sorted((read_json(p) for p in (Path(args.out) / "accuracy").glob(f"{arm}_s*/eval.json")), key=lambda r: r["seed"])
        if runs:
            acc = [r["accuracy"] for r in runs]
            arms[arm] = {"seeds": [r["seed"] for r in runs], "accuracy": acc, "mean": float(np.mean(acc)),
                         "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                         "images": runs[0]["images"], "identities": runs[0]["identities"],
                         "fold_std": [r["accuracy_std_folds"] for r in runs]}
    best = max(BASELINES, key=lambda m: flags["methods"][m]["overall"]["f1"])
    out = {"rate": args.accuracy_rate, "best_baseline": best, "arms": arms}
    if "noisy" in arms and "clean" in arms:
        gap = arms["clean"]["mean"] - arms["noisy"]["mean"]
        out["gap"] = gap
        for arm in ("cleanface", "baseline"):
            if arm in arms and gap != 0:
                arms[arm]["gap_closed"] = (arms[arm]["mean"] - arms["noisy"]["mean"]) / gap
    write_json(Path(args.out) / "accuracy.json", out)
    return out


# -- rendering -----------------------------------------------------------------------------------------------
def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render(args) -> str:
    """``OUT/tables.md`` and the SVG charts, from the JSON files only."""
    from cleanface.report.svg import line_chart

    out = Path(args.out)
    rates = sorted((r for r in (read_json(p) for p in out.glob("rate_*/flags.json")) if r), key=lambda r: r["rate"])
    timings = {"steps": {}, "invocations": []}
    for path in sorted(out.glob("timings*.json")):  # a --flags-only process beside the main one keeps its own file
        part = read_json(path) or {}
        timings["steps"].update(part.get("steps", {}))
        timings["invocations"] += part.get("invocations", [])
    md: list[str] = []
    total = sum(s["wall_s"] for s in timings["steps"].values())
    n_train = sum(1 for k in timings["steps"] if k.endswith("/train") or "/train-" in k or re.search(r"fold\d$", k))
    starts = [datetime.fromisoformat(i["started"]) for i in timings["invocations"]]
    ends = [datetime.fromisoformat(st["finished"]) for st in timings["steps"].values()]
    span = (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else 0.0
    md.append(f"Sum of the wall times of all steps: {total / 60:.1f} min ({n_train} trainings); first start to last step finished: "
              f"{span:.1f} min; {len(timings['invocations'])} invocation(s) (from `{out.name}/timings*.json`).\n")
    if rates:
        md.append("**F1 of the flags by noise rate** (from `rate_XX/flags.json`)\n")
        md.append("| Method | " + " | ".join(f"{int(r['rate'] * 100)}% noise" for r in rates) + " |")
        md.append("|---|" + "---:|" * len(rates))
        for m in METHODS:
            md.append(f"| {m} | " + " | ".join(_f(r["methods"][m]["overall"]["f1"]) for r in rates) + " |")
        md.append("")
    for r in rates:
        c = r["noise"]["counts"]
        md.append(f"**{int(r['rate'] * 100)}% noise**: {r['noise']['images']:,} images, {r['noise']['identities']} identities; "
                  f"noisy images: {c['close-set']} close-set, {c['open-set']} open-set, {c['merged']} merged, {c['split']} split "
                  f"(from `{rate_tag(r['rate'])}/flags.json`). Per type: precision / recall / F1 on the images that are clean or of that type.\n")
        md.append("| Method | Flagged | Precision | Recall | F1 | Close-set P / R / F1 | Open-set P / R / F1 | Merged recall | Split recall | Clean flagged |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in METHODS:
            res = r["methods"][m]
            o, p, pt = res["overall"], res["per_type_prf"], res["per_type"]
            prf = lambda t: " / ".join(_f(p[t][k], 2) for k in ("precision", "recall", "f1")) if t in p else "–"  # noqa: E731
            md.append(f"| {m} | {o['flagged']:,} | {_f(o['precision'])} | {_f(o['recall'])} | **{_f(o['f1'])}** | {prf('close-set')} | {prf('open-set')} | "
                      f"{_f(pt.get('merged', {}).get('recall'), 2)} | {_f(pt.get('split', {}).get('recall'), 2)} | {_f(pt['clean']['false_flag_rate'])} |")
        a, il = r["cleanface_actions"], r["cleanface_identity_level"]
        md.append("")
        md.append("cleanface actions: " + ", ".join(f"{k} {v}" for k, v in a.items() if v) + f". Identity level: merged pair "
                  f"{'reported' if il['merged_pair_reported_as_split'] else 'not reported'} as a split candidate; split identity "
                  f"{'merged back' if il['split_identity_merged_back'] else 'not merged back'}; {il['merge_groups']} merge group(s), "
                  f"{il['other_merge_groups']} of them other than the split identity; {il['split_candidates']} split candidate(s).\n")
    for r in rates:
        d = read_json(out / rate_tag(r["rate"]) / "diagnostics.json")
        if not d:
            continue
        tag = f"{int(r['rate'] * 100)}%"
        md.append(f"**What would change the ranking at {tag} noise** (from `{rate_tag(r['rate'])}/diagnostics.json`; no retraining: "
                  "the same embeddings and probabilities under other settings). F1 (precision / recall).\n")
        ts = list(d["angle_k1_by_threshold"])
        md.append("| Rule | " + " | ".join(f"> {t}°" for t in ts) + " |")
        md.append("|---|" + "---:|" * len(ts))
        for key, label in (("cleanface_angle_only_by_threshold", "K=3 angle to dominant sub-center only (cleanface without relabel)"),
                           ("angle_k1_by_threshold", "K=1 angle to class centre (angle-k1)")):
            md.append(f"| {label} | " + " | ".join(f"{_f(d[key][t]['f1'])} ({_f(d[key][t]['precision'], 2)} / {_f(d[key][t]['recall'], 2)})" for t in ts) + " |")
        md.append("")
        knn = "; ".join(f"k={k}: {_f(v['f1'])} ({_f(v['precision'], 2)} / {_f(v['recall'], 2)})" for k, v in d["knn_vote_by_k"].items())
        adv = d.get("cleanface_angle_only_at_advised")
        md.append(f"knn-vote by k: {knn}. Median images per identity {d['images_per_identity_median']:.0f}; {d['identities_below_6_images']} identities "
                  f"have fewer than 6 images, where a majority of 10 neighbours cannot share the label. cleanlab's cross-validated classifier "
                  f"puts the given label first for {d['cleanlab_oos_top1_accuracy_clean']:.1%} of the clean images (mean top probability "
                  f"{d['cleanlab_oos_mean_max_prob']:.2f}). purify's advised threshold: {_f(d['cleanface_advised_threshold'], 1)}°"
                  + (f" (angle-only F1 there {_f(adv['f1'])}, precision {_f(adv['precision'], 2)}, recall {_f(adv['recall'], 2)})" if adv else "") + ".\n")
    acc = collect_accuracy(args)
    if acc and acc["arms"]:
        md.append(f"**Verification accuracy on `pairsDevTest.txt`** (1,000 identity-disjoint pairs, 10-fold), final model ElasticFace-Arc+ "
                  f"trained on each set at {int(acc['rate'] * 100)}% noise; best baseline by F1: `{acc['best_baseline']}` "
                  f"(from `accuracy.json` and `accuracy/ARM_sSEED/eval.json`)\n")
        seeds = sorted({s for a in acc["arms"].values() for s in a["seeds"]})
        md.append("| Training set | Images | Identities | " + " | ".join(f"Seed {s}" for s in seeds) + " | Mean ± std over seeds | Share of noisy-to-clean gap closed |")
        md.append("|---|---:|---:|" + "---:|" * len(seeds) + "---:|---:|")
        for arm in ARMS:
            if arm not in acc["arms"]:
                continue
            a = acc["arms"][arm]
            by_seed = dict(zip(a["seeds"], a["accuracy"]))
            name = ARM_TEXT[arm] + (f" (`{acc['best_baseline']}`)" if arm == "baseline" else "")
            gap = f"{a['gap_closed'] * 100:.0f}%" if "gap_closed" in a else "–"
            md.append(f"| {name} | {a['images']:,} | {a['identities']} | " + " | ".join(_f(by_seed.get(s)) for s in seeds)
                      + f" | {_f(a['mean'])} ± {_f(a['std'])} | {gap} |")
        md.append("")
    text = "\n".join(md) + "\n"
    (out / "tables.md").write_text(text)
    svg_dir = Path(args.svg_dir)
    for r in rates:
        svg_dir.mkdir(parents=True, exist_ok=True)
        (svg_dir / f"lfw_noise_flags_{int(round(r['rate'] * 100)):02d}{args.svg_suffix}.svg").write_text(flags_svg(r) + "\n")
    if len(rates) >= 2:  # lines need two rates or more
        svg_dir.mkdir(parents=True, exist_ok=True)
        x = [100 * r["rate"] for r in rates]
        for metric in ("f1", "precision", "recall"):
            series = {m: (x, [r["methods"][m]["overall"][metric] for r in rates]) for m in METHODS}
            svg = line_chart(series, title=f"LFW, injected noise: {metric} of the flags per method", x_label="noise rate (% of images)",
                             y_label=metric, y_min=0.0, y_max=1.0)
            (svg_dir / f"lfw_noise_{metric}{args.svg_suffix}.svg").write_text(svg + "\n")
    if acc and acc["arms"]:
        (svg_dir / f"lfw_noise_accuracy{args.svg_suffix}.svg").write_text(accuracy_svg(acc) + "\n")
    return text


def flags_svg(r: dict) -> str:
    """Grouped bars: precision, recall and F1 of each method at one noise rate."""
    from html import escape

    from cleanface.report.svg import PALETTE

    metrics = ("precision", "recall", "f1")
    width, height, left, right, top, bottom = 640, 300, 50, 20, 50, 50
    group = (width - left - right) / len(METHODS)
    bar = group / (len(metrics) + 1.5)
    py = lambda v: top + (1 - v) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<title>LFW, {int(r["rate"] * 100)}% injected noise: precision, recall and F1 of the flags</title>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">LFW, {int(r["rate"] * 100)}% injected noise: flags against the truth</text>']
    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    for j, m in enumerate(metrics):
        parts.append(f'<rect x="{left + 10 + j * 90}" y="30" width="10" height="10" fill="{PALETTE[j]}"/>'
                     f'<text x="{left + 24 + j * 90}" y="39">{m}</text>')
    for i, method in enumerate(METHODS):
        o = r["methods"][method]["overall"]
        x0 = left + i * group + bar * 0.75
        for j, m in enumerate(metrics):
            v = float(o[m])
            parts.append(f'<rect x="{x0 + j * bar:.1f}" y="{py(v):.1f}" width="{bar - 2:.1f}" height="{py(0) - py(v):.1f}" fill="{PALETTE[j]}">'
                         f'<title>{escape(method)} {m} {v:.3f}</title></rect>')
            parts.append(f'<text x="{x0 + j * bar + bar / 2 - 1:.1f}" y="{py(v) - 3:.1f}" text-anchor="middle" font-size="10">{v:.2f}</text>')
        parts.append(f'<text x="{left + i * group + group / 2:.1f}" y="{height - bottom + 18}" text-anchor="middle">{escape(method)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def accuracy_svg(acc: dict) -> str:
    """A horizontal dot plot: each seed's accuracy and the mean per training set."""
    from html import escape

    arms = [a for a in ARMS if a in acc["arms"]]
    vals = [v for a in arms for v in acc["arms"][a]["accuracy"]]
    lo, hi = np.floor(min(vals) * 100 - 1) / 100, np.ceil(max(vals) * 100 + 1) / 100
    width, left, right, top, row = 640, 230, 20, 40, 34
    height = top + row * len(arms) + 40
    px = lambda v: left + (v - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             '<title>LFW pairsDevTest accuracy per training set</title>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">Verification accuracy (pairsDevTest), {int(acc["rate"] * 100)}% noise</text>']
    ticks = np.arange(lo, hi + 1e-9, 0.01 if hi - lo <= 0.08 else 0.02)
    base = top + row * len(arms)
    for t in ticks:
        parts.append(f'<line x1="{px(t):.1f}" y1="{top - 6}" x2="{px(t):.1f}" y2="{base}" stroke="#ddd"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{base + 16}" text-anchor="middle">{t:.2f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{base + 34}" text-anchor="middle">accuracy (dots: seeds, bar: mean)</text>')
    for i, arm in enumerate(arms):
        a = acc["arms"][arm]
        y = top + row * i + row / 2
        label = ARM_TEXT[arm] + (f" ({acc['best_baseline']})" if arm == "baseline" else "")
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        for v in a["accuracy"]:
            parts.append(f'<circle cx="{px(v):.1f}" cy="{y:.1f}" r="4" fill="#2b6cb0" fill-opacity="0.7"><title>{v:.4f}</title></circle>')
        parts.append(f'<line x1="{px(a["mean"]):.1f}" y1="{y - 10:.1f}" x2="{px(a["mean"]):.1f}" y2="{y + 10:.1f}" stroke="#c53030" stroke-width="2.5"><title>mean {a["mean"]:.4f}</title></line>')
    parts.append("</svg>")
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"))
    p.add_argument("--out", default=None, help="default bench-out/lfw_noise (bench-out/lfw_noise_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="40 identities, 2 epochs (1 per fold), rates 0.1 and 0.2: a smoke run of every path")
    p.add_argument("--rates", default="0.2,0.1,0.4", help="noise rates, in the order they run")
    p.add_argument("--accuracy-rate", type=float, default=0.2)
    p.add_argument("--seeds", default="0,1", help="training seeds of item 2")
    p.add_argument("--epochs", type=int, default=6, help="epochs of every training but the cleanlab folds (6: half of lfw_train.py, to fit a shared 2-core machine)")
    p.add_argument("--cv-folds", type=int, default=3)
    p.add_argument("--cv-epochs", type=int, default=3, help="epochs of each cleanlab cross-validation fold")
    p.add_argument("--knn", type=int, default=10)
    p.add_argument("--noise-seed", type=int, default=1)
    p.add_argument("--svg-dir", default=None, help="default docs/img (OUT with --quick)")
    p.add_argument("--arms", default=",".join(ARMS), help="training sets of item 2 to train here (several processes can share the work)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 per process is faster on a crowded machine")
    p.add_argument("--flags-only", action="store_true", help="only the flag comparison at --rates (no item 2); may run beside a main run on other rates")
    p.add_argument("--cv-only", action="store_true", help="only train the cleanlab folds of --rates (beside a --flags-only process doing the rest)")
    p.add_argument("--k1-only", action="store_true", help="only train the ArcFace K=1 run of --rates (beside a --flags-only process doing the rest)")
    p.add_argument("--render-only", action="store_true", help="only write OUT/tables.md and the SVGs from the JSON files")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.cv_epochs = 2, 1
        if args.rates == p.get_default("rates"):
            args.rates = "0.2,0.1"
    args.out = args.out or str(REPO / "bench-out" / ("lfw_noise_quick" if args.quick else "lfw_noise"))
    args.svg_dir = args.svg_dir or (args.out if args.quick else str(REPO / "docs" / "img"))
    args.svg_suffix = ""
    out = Path(args.out)
    if args.render_only:
        for path in sorted(out.glob("rate_*/flags.json")):
            diagnostics(args, read_json(path)["rate"])
        print(render(args))
        return
    root = Path(args.lfw)
    if not (root / "images_deepfunneled").is_dir() or not (root / "peopleDevTrain.txt").is_file() or not (root / "pairsDevTest.txt").is_file():
        sys.exit(f"LFW not found at {root} (expected images_deepfunneled/, peopleDevTrain.txt and pairsDevTest.txt); pass --lfw PATH")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    # a process started beside the main one (other rates, other seeds) keeps its own timings file
    name = "timings_" + "_".join(rate_tag(r) for r in rates) + ("_cv" if args.cv_only else "_k1" if args.k1_only else "_flags" if args.flags_only else "_s" + args.seeds.replace(",", "-")
                                                                 + ("" if args.arms == p.get_default("arms") else "_" + args.arms.replace(",", "-"))) + ".json"
    if args.rates == p.get_default("rates") and args.seeds == p.get_default("seeds") and args.arms == p.get_default("arms") and not args.flags_only:
        name = "timings.json"
    timings = Timings(out / name)
    timings.data.setdefault("invocations", []).append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[1:],
                                                       "cores": os.cpu_count(), "gpu": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
                                                       "python": platform.python_version(), "torch": torch.__version__})
    write_json(timings.path, timings.data)
    pool, outside = build_pool(root, out, args.quick)
    log(f"pool: {pool.num_identities} identities, {len(pool)} images; outside: {len(outside)} images")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.cv_only or args.k1_only:  # they need only the noisy set; flag_rate finds them done later
        from cleanface.data.open import open_dataset

        for r in rates:
            rate_dir = out / rate_tag(r)
            noisy = noisy_set(pool, outside, rate_dir, r, args.noise_seed, timings)
            if args.cv_only:
                cleanlab_probs(args, rate_dir, open_dataset(noisy, silent=True), timings)
            else:
                trained(rate_dir / "arc_k1", noisy, timings, f"{rate_dir.name}/train-arcface-k1", head="arcface", settings=train_settings(args, 0))
        return
    if args.flags_only:
        for r in rates:
            flag_rate(args, pool, outside, r, timings)
        timings.data["invocations"][-1]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(timings.path, timings.data)
        print(render(args))
        return
    first = [r for r in rates if abs(r - args.accuracy_rate) < 1e-9] or [args.accuracy_rate]
    # order of work, most important first: flags at the accuracy rate, item 2 seed by seed, then the other rates
    flag_rate(args, pool, outside, first[0], timings)
    render(args)
    for seed in seeds:
        accuracy(args, root, [seed], timings)
        render(args)
    for r in rates:
        if abs(r - first[0]) > 1e-9:
            flag_rate(args, pool, outside, r, timings)
            render(args)
    text = render(args)
    timings.data["invocations"][-1]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(timings.path, timings.data)
    print(text)


if __name__ == "__main__":
    main()
