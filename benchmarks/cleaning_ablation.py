"""Which signal finds the noise: flags of each signal alone and of the default, on LFW and CelebA at 10/20/40%.

The noisy sets, cleanface's own sub-center run (K=3, compact, 64x64, 6 epochs, s=32, m=0.3) and its
embeddings are those of ``benchmarks/pretrained_noise.py`` (``own`` step). Methods, none of which
sees the truth:

* ``sub-center angle > 75°``: purify's rules before issue 16 (``drop_rule="angle"``) and 17
  (``merge_rule = split_rule = "angle"``), relabel at its default; ``... advised``: the same at the
  two-Gaussian advised threshold;
* ``LOO-mean angle, calibrated, 1 round``: the calibrated rules (``drop_rule="calibrated"``, calibrated
  merge and split), one round (``--rounds 1``);
* ``... 2 rounds (default)``: ``cleanface purify RUN DATA`` (``--rounds 2``, ``cleanface.pipeline.rounds``);
* baselines at their defaults, as in ``benchmarks/lfw_noise.py``: ArcFace K=1 angle > 75°
  (``angle-k1``), cleanlab ``find_label_issues`` on 3-fold cross-validated probabilities, and the
  vote of the 10 nearest neighbours (``knn-vote``).

Flagged = any action but keep. Every number lands in ``OUT/rate_XX/ablation.json``; ``render``
writes ``bench-out/cleaning_ablation.md``.

Usage (each step skips what exists; one step per process)::

    python benchmarks/pretrained_noise.py own --dataset lfw --rate 0.1      # noisy set + own run (once per set)
    python benchmarks/cleaning_ablation.py rounds    --dataset lfw --rate 0.1
    python benchmarks/cleaning_ablation.py baselines --dataset lfw --rate 0.1
    python benchmarks/cleaning_ablation.py compare   --dataset lfw --rate 0.1
    python benchmarks/cleaning_ablation.py render
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import lfw_noise as ln  # noqa: E402
import pretrained_noise as pn  # noqa: E402

RATES = (0.1, 0.2, 0.4)


def rate_dir(dataset: str, rate: float) -> Path:
    d = pn.OUTS[dataset] / ln.rate_tag(rate)
    if not (d / "sub_k3" / "COMPLETE").is_file() or not (d / "emb_k3" / "embeddings.json").is_file():
        sys.exit(f"{d}: run `python benchmarks/pretrained_noise.py own --dataset {dataset} --rate {rate}` first")
    return d


def step_rounds(dataset: str, rate: float) -> Path:
    """``purify --rounds 2`` with the own run: ``rate_XX/purify_r2`` (round 1 and the second run inside it)."""
    from cleanface._atomic import is_complete
    from cleanface.pipeline.rounds import purify_in_rounds

    d = rate_dir(dataset, rate)
    out = d / "purify_r2"
    if not is_complete(out):
        timings = ln.Timings(pn.OUTS[dataset] / f"timings_{d.name}_ablation.json")
        with timings.step(f"{d.name}/purify-rounds-2"):
            purify_in_rounds(d / "sub_k3", d / "noisy", out, rounds=2, truth=d / "noisy" / "noise_truth.csv", overwrite=True, silent=True)
    return out


def step_baselines(dataset: str, rate: float) -> Path:
    """angle-k1, cleanlab and knn-vote flags at their defaults: ``rate_XX/baselines.npz``."""
    from cleanlab.filter import find_label_issues

    d = rate_dir(dataset, rate)
    path = d / "baselines.npz"
    if path.is_file():
        return path
    timings = ln.Timings(pn.OUTS[dataset] / f"timings_{d.name}_ablation.json")
    args = argparse.Namespace(out=str(pn.OUTS[dataset]), epochs=6, cv_folds=3, cv_epochs=3, knn=10)
    noisy = d / "noisy"
    index, _ = ln.open_noisy(noisy, pn._names(d / "sub_k3"))
    settings = pn.settings_for(dataset, 6)
    run_k1 = ln.trained(d / "arc_k1", noisy, timings, f"{d.name}/train-arcface-k1", head="arcface", settings=settings)
    index_k1, _ = ln.open_noisy(noisy, pn._names(run_k1))
    emb, centers = ln.embeddings(run_k1, index_k1, d / "emb_k1", timings, f"{d.name}/embed-k1", crop=pn.CROP[dataset])
    cos = np.einsum("nd,nd->n", emb, centers[index_k1.labels, 0, :])
    angle_k1 = np.degrees(np.arccos(np.clip(cos, -1, 1))) > 75.0
    probs = ln.cleanlab_probs(args, d, index_k1, timings, crop=pn.CROP[dataset])
    t0 = time.process_time()
    cleanlab = np.asarray(find_label_issues(index_k1.labels, probs, n_jobs=1), dtype=bool)
    knn = ln.knn_vote(emb, index_k1.labels, args.knn)
    np.savez(path, angle_k1=angle_k1, cleanlab=cleanlab, knn_vote=knn, cpu_s=time.process_time() - t0)
    return path


def own_arrays(d: Path):
    """The own run's embeddings, sub-centers, the noisy index in its label order and the aligned truth."""
    from cleanface.inference.run import load_run
    from cleanface.purify.analysis import l2_normalize

    index, truth = ln.open_noisy(d / "noisy", pn._names(d / "sub_k3"))
    emb = np.asarray(np.load(d / "emb_k3" / "embeddings.npy"), dtype=np.float32)
    centers = l2_normalize(load_run(d / "sub_k3").head.class_centers().numpy())
    return index, truth, emb, centers


def timed_decide(emb, index, centers, settings):
    from cleanface.purify.codes import ACTIONS
    from cleanface.purify.decisions import decide

    t0 = time.process_time()
    d = decide(emb, index.labels, centers, settings, names=list(index.names), silent=True, labels_learned=True)  # the own run's embeddings, as purify RUN DATA
    return d, d.action != ACTIONS.index("keep"), time.process_time() - t0


def step_compare(dataset: str, rate: float) -> dict:
    from cleanface.purify.settings import PurifySettings

    d = rate_dir(dataset, rate)
    index, truth, emb, centers = own_arrays(d)
    flags, cpu, extra = {}, {}, {}
    old, flags["sub-center angle > 75° (purify before)"], cpu["sub-center angle > 75° (purify before)"] = timed_decide(
        emb, index, centers, PurifySettings(drop_rule="angle", merge_rule="angle", split_rule="angle"))
    adv = old.advice.get("threshold")
    if adv is not None:
        key = "sub-center angle > advised (two-Gaussian)"
        _, flags[key], cpu[key] = timed_decide(emb, index, centers, PurifySettings(drop_rule="angle", merge_rule="angle", split_rule="angle",
                                                                                  threshold=float(adv)))
        extra["advised_threshold"] = round(float(adv), 2)
    new, flags["LOO-mean angle, calibrated, 1 round (`--rounds 1`)"], cpu["LOO-mean angle, calibrated, 1 round (`--rounds 1`)"] = timed_decide(
        emb, index, centers, PurifySettings())
    extra["calibration"] = new.calibration
    loo = np.nan_to_num(new.loo_angle, nan=0.0)
    cal = new.calibration.get("threshold")
    flags["LOO-mean angle > calibrated, drop rule alone (no relabel/merge)"] = loo > (cal if cal is not None else 180.0)
    r2 = d / "purify_r2"
    if (r2 / "COMPLETE").is_file():
        key = "LOO-mean angle, calibrated, 2 rounds (default)"
        flags[key] = ln.read_decisions(r2 / "decisions.csv", len(index)) != "keep"
        extra["calibration_round2"] = json.loads((r2 / "summary.json").read_text()).get("calibration")
    base = d / "baselines.npz"
    if base.is_file():
        z = np.load(base)
        for name in ("angle_k1", "cleanlab", "knn_vote"):
            flags[f"baseline {name.replace('_', '-')}"] = z[name]
    res = {"dataset": dataset, "rate": rate, "images": len(index), "identities": index.num_identities,
           "noisy": int(truth["is_noise"].sum()), "methods": {m: ln.score(f, truth) for m, f in flags.items()},
           "decide_cpu_s": {m: round(v, 2) for m, v in cpu.items()}, **extra, "timings": _timings(dataset, d.name)}
    ln.write_json(d / "ablation.json", res)
    for m, r in res["methods"].items():
        o = r["overall"]
        ln.log(f"{dataset} {d.name} {m}: P {o['precision']:.3f} R {o['recall']:.3f} F1 {o['f1']:.3f}")
    return res


def _timings(dataset: str, tag: str) -> dict:
    """CPU seconds of the trainings behind each method, from the timings files of this rate."""
    out = {}
    for path in sorted(pn.OUTS[dataset].glob(f"timings_{tag}_*.json")):
        for step, v in (ln.read_json(path) or {}).get("steps", {}).items():
            out[step] = v.get("cpu_s")
    return out


def step_render() -> str:
    md = []
    for dataset in pn.DATA:
        rows: dict[str, dict[float, dict]] = {}
        for rate in RATES:
            r = ln.read_json(pn.OUTS[dataset] / ln.rate_tag(rate) / "ablation.json")
            for m, v in (r or {}).get("methods", {}).items():
                rows.setdefault(m, {})[rate] = v
        if not rows:
            continue
        md.append(f"**{dataset}**: precision / recall / **F1** (clean images flagged) at each noise rate\n")
        md.append("| Method | " + " | ".join(f"{int(r * 100)}%" for r in RATES) + " |")
        md.append("|---|" + "---|" * len(RATES))
        for m, by in rows.items():
            cells = []
            for rate in RATES:
                v = by.get(rate)
                if v is None:
                    cells.append("–")
                    continue
                o, clean = v["overall"], v["per_type"]["clean"]["false_flag_rate"]
                cells.append(f"{o['precision']:.2f} / {o['recall']:.2f} / **{o['f1']:.3f}** ({clean:.1%})")
            md.append(f"| {m} | " + " | ".join(cells) + " |")
        md.append("")
    text = "\n".join(md) + "\n"
    (REPO / "bench-out" / "cleaning_ablation.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("rounds", "baselines", "compare", "render"))
    p.add_argument("--dataset", choices=tuple(pn.DATA), default="lfw")
    p.add_argument("--rate", type=float, default=0.2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.step == "rounds":
        step_rounds(args.dataset, args.rate)
    elif args.step == "baselines":
        step_baselines(args.dataset, args.rate)
    elif args.step == "compare":
        step_compare(args.dataset, args.rate)
    else:
        print(step_render())
    ln.log(f"{args.step} {args.dataset} {args.rate}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
