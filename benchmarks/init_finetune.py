"""Fine-tuning from a pretrained model (``--init``) against training from scratch, on synthetic faces.

Three disjoint sets of synthetic identities (``make_synthetic``, 64x64, one seed, disjoint names):

* ``pretrain``: model A is trained on it (ElasticFace-Arc+, compact backbone, the settings of
  ``pipelines/demo.toml``: s=32, m=0.3, no gradient clipping, lr 0.1);
* ``finetune``: other identities; for each seed and epoch budget, three runs with the same settings,
  epochs and seed: ``init A`` (``init=A``: A's backbone, the head at the class means of A's
  embeddings), ``init A, random head`` (A's backbone, the head's random start: the head init
  switched off, an ablation) and ``scratch`` (random weights);
* ``heldout``: identities neither saw, with an LFW-style pairs file, for 10-fold verification
  accuracy (:func:`cleanface.eval.pairs.evaluate`).

Reported per arm (mean +- std over the seeds): training accuracy and loss of the first and of the
last epoch (means of that epoch's ``metrics.jsonl`` rows), held-out verification accuracy, and
A's own held-out accuracy (no fine-tuning) for reference.

Usage::

    python benchmarks/init_finetune.py                       # the defaults below; about 10 min on 2 cores
    python benchmarks/init_finetune.py --seeds 0,1,2 --epochs 4,12 --out bench-out/init_finetune

Finished runs are reused (a re-run only evaluates); the result is ``OUT/result_lr<LR>.json`` and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from cleanface.data.synthetic import make_pairs, make_synthetic  # noqa: E402
from cleanface.eval.pairs import evaluate  # noqa: E402
from cleanface.inference.run import load_run  # noqa: E402
from cleanface.training import init as pretrained  # noqa: E402
from cleanface.training.trainer import train_final  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
RECIPE = {"backbone": "compact", "input_size": SIZE, "embedding_size": 128, "batch_size": 64, "lr": 0.1, "scale": 32.0, "margin": 0.3,
          "grad_clip": 0, "device": "cpu", "silent": True}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "init_finetune")
    p.add_argument("--pretrain-identities", type=int, default=200)
    p.add_argument("--finetune-identities", type=int, default=50)
    p.add_argument("--heldout-identities", type=int, default=60)
    p.add_argument("--per-identity", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=12)
    p.add_argument("--epochs", default="4,12", help="Fine-tuning epoch budgets (every arm, every seed).")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pairs", type=int, default=1200)
    p.add_argument("--loss", default="elastic-arc+")
    p.add_argument("--lr", type=float, default=0.1, help="Learning rate of the fine-tuning runs (model A: 0.1).")
    return p.parse_args()


def make_sets(a: argparse.Namespace) -> dict[str, Path]:
    """The three identity sets (names ``id_NNNN`` in disjoint ranges) and the held-out pairs file."""
    sizes = {"pretrain": a.pretrain_identities, "finetune": a.finetune_identities, "heldout": a.heldout_identities}
    sets, first = {}, 0
    for name, count in sizes.items():
        folder = a.out / "data" / name
        if not (folder / "synthetic.json").is_file():
            make_synthetic(folder, identities=count, per_identity=a.per_identity, size=SIZE, seed=0, first_identity=first, overwrite=True, silent=True)
        sets[name] = folder
        first += count
    pairs = a.out / "data" / "heldout_pairs.txt"
    if not pairs.is_file():
        make_pairs(sets["heldout"], pairs, num_pairs=a.pairs, seed=0, folds=10)
    sets["pairs"] = pairs
    return sets


def trained(data: Path, out: Path, **settings) -> tuple[Path, float]:
    """A finished run (trained now, or found complete), and the seconds its training took."""
    run = train_final(data, out, resume=True, cache_dir=str(out.parent / "cache"), **settings)
    return run, float(json.loads((run / "train_summary.json").read_text())["elapsed_s"])


def epoch_stats(run: Path) -> list[dict[str, float]]:
    """Mean loss and accuracy of each epoch's logged rows (``metrics.jsonl``)."""
    rows: dict[int, list[dict]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(max(0, int(-(-row["epoch"] // 1)) - 1), []).append(row)
    return [{"loss": statistics.fmean(r["loss"] for r in v), "acc": statistics.fmean(r["acc"] for r in v)} for _, v in sorted(rows.items())]


def verify(run: Path, sets: dict[str, Path]) -> float:
    backbone = load_run(run).backbone
    return float(evaluate(backbone, sets["pairs"], images_root=sets["heldout"], size=SIZE, silent=True)["accuracy"])


@contextlib.contextmanager
def random_head():
    """The ablation: ``init`` loads the backbone but leaves the head's random rows (the head init made a no-op)."""
    original = pretrained.init_head
    pretrained.init_head = lambda head, *args, **kw: {"method": "random (ablation)", "classes": head.num_classes, "classes_set": 0, "images": 0}
    try:
        yield
    finally:
        pretrained.init_head = original


ARMS = {"init A": "initA", "init A, random head": "initA_randomhead", "scratch": "scratch"}


def arm(a: argparse.Namespace, sets: dict[str, Path], name: str, seed: int, epochs: int, model_a: Path) -> dict:
    init = None if name == "scratch" else str(model_a)
    with random_head() if name == "init A, random head" else contextlib.nullcontext():
        run, seconds = trained(sets["finetune"], a.out / "runs" / f"{ARMS[name]}_lr{a.lr:g}_e{epochs}_seed{seed}", loss=a.loss, epochs=epochs,
                               seed=seed, init=init, log_every=1, **{**RECIPE, "lr": a.lr})
    per_epoch = epoch_stats(run)
    config = json.loads((run / "config.json").read_text())
    return {"arm": name, "epochs": epochs, "seed": seed, "train_s": round(seconds, 1), "first_epoch": per_epoch[0], "last_epoch": per_epoch[-1],
            "heldout_accuracy": verify(run, sets), "init_s": (config.get("init_source") or {}).get("elapsed_s")}


def summary(rows: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for key in dict.fromkeys(f"{r['arm']}, {r['epochs']} epochs" for r in rows):
        mine = [r for r in rows if f"{r['arm']}, {r['epochs']} epochs" == key]
        values = {"first_epoch_acc": [r["first_epoch"]["acc"] for r in mine], "last_epoch_acc": [r["last_epoch"]["acc"] for r in mine],
                  "first_epoch_loss": [r["first_epoch"]["loss"] for r in mine], "last_epoch_loss": [r["last_epoch"]["loss"] for r in mine],
                  "heldout_accuracy": [r["heldout_accuracy"] for r in mine]}
        out[key] = {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in values.items()}
    return out


def table(stats: dict, a: argparse.Namespace, base: float) -> str:
    cols = ["first_epoch_acc", "last_epoch_acc", "first_epoch_loss", "last_epoch_loss", "heldout_accuracy"]
    lines = [f"| arm ({a.loss}, lr {a.lr:g}, seeds {a.seeds}) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in stats.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[c][0]:.3f} +- {s[c][1]:.3f}" for c in cols) + " |")
    lines.append(f"| model A alone (no fine-tuning) | | | | | {base:.3f} |")
    return "\n".join(lines)


def main() -> None:
    a = parse()
    a.out.mkdir(parents=True, exist_ok=True)
    sets = make_sets(a)
    model_a, seconds_a = trained(sets["pretrain"], a.out / "runs" / "model_A", loss=a.loss, epochs=a.pretrain_epochs, seed=0, **RECIPE)
    base = verify(model_a, sets)
    rows = []
    for epochs in [int(e) for e in a.epochs.split(",")]:
        for name in ARMS:
            for seed in [int(s) for s in a.seeds.split(",")]:
                rows.append(arm(a, sets, name, seed, epochs, model_a))
                print(json.dumps(rows[-1]), flush=True)
    stats = summary(rows)
    result = {"settings": {k: str(v) for k, v in vars(a).items()}, "recipe": RECIPE, "model_A": {"heldout_accuracy": base, "train_s": round(seconds_a, 1)},
              "runs": rows, "summary": stats}
    (a.out / f"result_lr{a.lr:g}.json").write_text(json.dumps(result, indent=2))
    print(table(stats, a, base))


if __name__ == "__main__":
    main()
