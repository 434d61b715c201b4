"""The stage kinds a pipeline file can name; each calls the library, nothing more.

Every stage returns its outputs (paths and numbers) as a dict; later stages name the
stage they read from with settings such as ``input``, ``run``, ``truth`` or ``pairs``.
Library imports happen inside the stage functions so that the engine stays light.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cleanface._atomic import atomic_write_json
from cleanface.errors import ConfigError
from cleanface.pipeline.engine import StageContext, register_stage

TRAIN_KEYS = (
    "backbone", "embedding_size", "input_size", "crop", "k", "margin", "scale", "sigma", "epochs",
    "batch_size", "lr", "warmup_epochs", "schedule", "amp", "device", "seed", "workers", "sample_rate",
    "grad_clip", "checkpoint_every", "channels_last", "compile", "weight_decay", "init",
)


def _pick(settings: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: settings[k] for k in keys if k in settings}


def _unknown(ctx: StageContext, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(ctx.settings) - set(allowed))
    if extra:
        raise ConfigError(f"stage {ctx.spec.name!r} ({ctx.spec.kind}): unknown setting(s) {', '.join(extra)}; allowed: {', '.join(allowed)}")


@register_stage("make-synthetic", refs=())
def make_synthetic_stage(ctx: StageContext) -> dict[str, Any]:
    """Draw synthetic identities for training and disjoint held-out identities with pairs."""
    from cleanface.data.synthetic import make_pairs, make_synthetic

    s = ctx.settings
    _unknown(ctx, ("identities", "per_identity", "size", "seed", "eval_identities", "eval_per_identity", "eval_pairs"))
    size = int(s.get("size", 64))
    seed = int(s.get("seed", 0))
    data = make_synthetic(ctx.dir / "train", identities=int(s.get("identities", 100)), per_identity=int(s.get("per_identity", 20)), size=size, seed=seed, silent=ctx.silent)
    outputs: dict[str, Any] = {"data": str(data)}
    if int(s.get("eval_identities", 0)) > 0:
        held_out = make_synthetic(
            ctx.dir / "heldout", identities=int(s["eval_identities"]), per_identity=int(s.get("eval_per_identity", 8)),
            size=size, seed=seed + 1_000_003, name_prefix="heldout", silent=ctx.silent,
        )
        pairs = ctx.dir / "pairs.txt"
        make_pairs(held_out, pairs, num_pairs=int(s.get("eval_pairs", 1000)), seed=seed)
        outputs.update(eval_images=str(held_out), eval_pairs=str(pairs))
    return outputs


@register_stage("dataset", refs=())
def dataset_stage(ctx: StageContext) -> dict[str, Any]:
    """Use an existing dataset (image folder, CSV manifest or RecordIO) as it is."""
    from cleanface.data.open import open_dataset

    _unknown(ctx, ("path", "pairs", "pairs_images"))
    path = ctx.settings.get("path")
    if not path:
        raise ConfigError(f"stage {ctx.spec.name!r} needs path = <dataset>")
    index = open_dataset(path)
    outputs: dict[str, Any] = {"data": str(Path(path).resolve()), "images": len(index), "identities": index.num_identities}
    if ctx.settings.get("pairs"):
        outputs.update(eval_pairs=str(Path(ctx.settings["pairs"]).resolve()), eval_images=str(Path(ctx.settings.get("pairs_images", path)).resolve()))
    return outputs


@register_stage("lfw", refs=())
def lfw_stage(ctx: StageContext) -> dict[str, Any]:
    """LFW: a training pool of people with >= min_images, the rest of the list as outside faces, and test pairs."""
    import numpy as np

    from cleanface.data.lfw import lfw_index

    _unknown(ctx, ("root", "people", "min_images", "pairs"))
    root = Path(ctx.settings.get("root", "../shared/data/lfw")).resolve()
    if not (root / "images_deepfunneled").is_dir():
        raise ConfigError(f"LFW not found at {root} (expected images_deepfunneled/ there); pass --set {ctx.spec.name}.root=PATH")
    images = root / "images_deepfunneled"
    people = root / ctx.settings.get("people", "peopleDevTrain.txt")
    min_images = int(ctx.settings.get("min_images", 4))
    everyone = lfw_index(images, people, min_images=1)
    counts = everyone.counts()
    pool = everyone.subset(np.flatnonzero(counts[everyone.labels] >= min_images))
    outside = everyone.subset(np.flatnonzero(counts[everyone.labels] < min_images))
    pool.save(ctx.dir / "pool.npz")
    outside.save(ctx.dir / "outside.npz")
    return {
        "data": str(ctx.dir / "pool.npz"),
        "outside": str(ctx.dir / "outside.npz"),
        "eval_pairs": str(root / ctx.settings.get("pairs", "pairsDevTest.txt")),
        "eval_images": str(images),
        "images": len(pool),
        "identities": pool.num_identities,
    }


@register_stage("inject-noise", refs=("input", "outside"))
def inject_noise_stage(ctx: StageContext) -> dict[str, Any]:
    """Write a noisy copy of the input with a ground-truth file."""
    from cleanface.data.noise import inject_noise
    from cleanface.data.open import open_dataset

    s = ctx.settings
    _unknown(ctx, ("input", "outside", "close_set", "open_set", "merge_identities", "split_identities", "seed"))
    source = open_dataset(ctx.upstream("input", "data"))
    outside = None
    if "outside" in s:
        outside = open_dataset(ctx.upstream("outside", "outside"))
    elif float(s.get("open_set", 0)) > 0:
        outside = _synthetic_outside(ctx, source)
    dst = ctx.dir / "noisy"
    inject_noise(
        source, dst, close_set=float(s.get("close_set", 0)), open_set=float(s.get("open_set", 0)), outside=outside,
        merge_identities=int(s.get("merge_identities", 0)), split_identities=int(s.get("split_identities", 0)), seed=int(s.get("seed", 0)),
    )
    return {"data": str(dst), "truth": str(dst / "noise_truth.csv")}


def _synthetic_outside(ctx: StageContext, source) -> Any:
    """Open-set faces for a synthetic source: new synthetic people who are not in the set."""
    from cleanface.data.open import open_dataset
    from cleanface.data.synthetic import make_synthetic

    data_stage = ctx.settings.get("input")
    size = int(ctx.outputs.get(data_stage, {}).get("size", 0)) or _image_size(source)
    rate = float(ctx.settings.get("open_set", 0))
    needed = math.ceil(rate * len(source) / max(1e-9, 1.0 - rate))  # open-set images are added on top of the set
    identities = max(20, source.num_identities // 2)
    per_identity = max(8, math.ceil(needed / identities) + 1)
    folder = make_synthetic(ctx.dir / "outside", identities=identities, per_identity=per_identity, size=size, seed=7_777_777, name_prefix="outside", silent=ctx.silent)
    return open_dataset(folder)


def _image_size(index) -> int:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(index.read_bytes(0))) as image:
        return image.size[0]


def _train(ctx: StageContext, final: bool) -> dict[str, Any]:
    from cleanface.training.trainer import train_final, train_subcenter

    s = ctx.settings
    _unknown(ctx, ("input", "loss", *TRAIN_KEYS))
    data = ctx.upstream("input", "data")
    overrides = _pick(s, TRAIN_KEYS)
    overrides["silent"] = ctx.silent
    overrides["resume"] = True  # a re-run after an interruption continues from the last checkpoint
    run = ctx.dir / "run"
    if final:
        train_final(data, run, loss=s.get("loss", "elastic-arc+"), **overrides)
    else:
        train_subcenter(data, run, **overrides)
    from cleanface.report.training import render_training_report

    return {"run": str(run), **_report(run, render_training_report)}


def _report(directory: Path, render: Any, **kwargs: Any) -> dict[str, Any]:
    """Render the report of a finished stage output: ``{"report": path}``, or ``{"report": None, "report_error": why}``.

    The stage's work is complete when this runs; a report that fails is recorded in the
    stage outputs (``cleanface report`` renders it again) instead of failing the stage.
    """
    try:
        return {"report": str(render(directory, **kwargs))}
    except Exception as exc:  # noqa: BLE001  (any failure of the report: a template error included)
        return {"report": None, "report_error": f"{type(exc).__name__}: {exc}"}


@register_stage("train-subcenter", refs=("input",))
def train_subcenter_stage(ctx: StageContext) -> dict[str, Any]:
    """Train with sub-center ArcFace (K sub-centers per identity)."""
    return _train(ctx, final=False)


@register_stage("train-final", refs=("input",))
def train_final_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the final model (ElasticFace by default)."""
    return _train(ctx, final=True)


DATA_ENTRY = {"folder": "data", "manifest": "manifest.csv", "rec": "train.rec"}  # the dataset inside a purify (or apply) output
PURIFY_KEYS = (
    "drop_rule", "noise_cut", "threshold", "relabel", "relabel_angle", "relabel_margin", "merge_rule", "merge_cut", "merge_auto_cut",
    "merge", "merge_angle", "split_rule", "split_cut", "split", "split_angle", "split_min_share", "dedup", "dup_cos", "drop_non_dominant", "keep_outlier_groups", "sanity_check",
)


@register_stage("purify", refs=("input", "run", "truth"))
def purify_stage(ctx: StageContext) -> dict[str, Any]:
    """Embed, decide and write the cleaned dataset with a decision for every image."""
    from cleanface.pipeline.rounds import DEFAULT_ROUNDS, purify_in_rounds
    from cleanface.purify.settings import PurifySettings

    s = ctx.settings
    _unknown(ctx, ("input", "run", "truth", "format", "device", "rounds", *PURIFY_KEYS))
    settings = PurifySettings(**_pick(s, PURIFY_KEYS))
    truth = ctx.upstream("truth", "truth") if "truth" in s else None
    out = ctx.dir / "clean"
    purify_in_rounds(
        ctx.upstream("run", "run"), ctx.upstream("input", "data"), out, rounds=int(s.get("rounds", DEFAULT_ROUNDS)), settings=settings,
        fmt=s.get("format", "folder"), truth=truth, overwrite=True, device=s.get("device", "cpu"), silent=ctx.silent,
    )
    from cleanface.report.purify import render_purify_report

    summary = json.loads((out / "summary.json").read_text())
    data = out / DATA_ENTRY[s.get("format", "folder")]
    report = _report(out, render_purify_report, silent=ctx.silent)  # images read by the decisions' locations: no second indexing
    return {"data": str(data), "clean": str(out), "summary": str(out / "summary.json"), **report, "images_after": summary.get("images_after")}


@register_stage("apply", refs=("input",), files={"overrides": "overrides.json"})
def apply_stage(ctx: StageContext) -> dict[str, Any]:
    """A person's review of a purify stage: wait for the overrides file, then apply it (the final dataset)."""
    from cleanface.errors import PipelinePaused
    from cleanface.pipeline.engine import stage_file
    from cleanface.purify.apply import apply_overrides

    s = ctx.settings
    _unknown(ctx, ("input", "overrides", "format", "copy"))
    clean = Path(ctx.upstream("input", "summary")).parent
    overrides = stage_file(ctx.spec, "overrides", ctx.workdir)
    if ctx.dir.resolve() in overrides.resolve().parents:
        raise ConfigError(f"stage {ctx.spec.name!r}: keep the overrides file {overrides} outside the stage's own directory (it is cleared on a re-run)")
    if not overrides.is_file():
        from cleanface.report.review import render_review

        page = render_review(clean, silent=ctx.silent)
        raise PipelinePaused(f"stage {ctx.spec.name!r} waits for a review: open {page}, export the overrides to {overrides}, "
                             "then run the pipeline again (it continues from here)")
    out = ctx.dir / "final"
    fmt = s.get("format")
    apply_overrides(clean, overrides, out, fmt=fmt, copy=bool(s.get("copy", False)), overwrite=True, silent=ctx.silent)
    from cleanface.report.purify import render_purify_report

    summary = json.loads((out / "summary.json").read_text())
    report = _report(out, render_purify_report, silent=ctx.silent)
    data = out / DATA_ENTRY[str(summary.get("format") or fmt or "folder")]
    return {"data": str(data), "clean": str(out), "summary": str(out / "summary.json"), **report, "images_after": summary.get("images_after"),
            "overrides": str(overrides)}


@register_stage("evaluate", refs=("pairs", "noisy", "purified", "clean"))
def evaluate_stage(ctx: StageContext) -> dict[str, Any]:
    """Verification accuracy of each trained model on the held-out pairs."""
    from cleanface.eval.pairs import evaluate
    from cleanface.inference.run import load_run

    _unknown(ctx, ("pairs", "noisy", "purified", "clean", "device"))
    pairs = ctx.upstream("pairs", "eval_pairs")
    images = ctx.upstream("pairs", "eval_images")
    results: dict[str, Any] = {}
    for role in ("noisy", "purified", "clean"):
        if role not in ctx.settings:
            continue
        run = load_run(ctx.upstream(role, "run"))
        config = run.config
        results[role] = evaluate(
            run.backbone, pairs, images_root=images, size=int(config["input_size"]), crop=config.get("crop"), device=ctx.settings.get("device", "cpu"),
        )
        results[role]["run"] = ctx.upstream(role, "run")
    atomic_write_json(ctx.dir / "evaluate.json", results)
    return {"results": str(ctx.dir / "evaluate.json"), **{f"{k}_accuracy": v.get("accuracy") for k, v in results.items()}}


@register_stage("report", refs=("stages",))
def report_stage(ctx: StageContext) -> dict[str, Any]:
    """One page linking every stage's report, with the before/after numbers."""
    from cleanface.report.pipeline import render_pipeline_report

    _unknown(ctx, ("stages",))
    names = ctx.settings.get("stages") or list(ctx.outputs)
    stages = []
    for name in names:
        if name not in ctx.outputs:
            raise ConfigError(f"stage {ctx.spec.name!r}: {name!r} is not an earlier finished stage")
        stages.append({"name": name, **ctx.outputs[name]})
    path = render_pipeline_report(ctx.workdir, stages)
    return {"report": str(path)}
