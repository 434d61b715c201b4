"""``cleanface train-subcenter``, ``train-final`` and ``evaluate`` (``embed`` is in embed_cmds.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click
from rich.table import Table

from cleanface_cli._common import console, handle_errors, no_report_option, render_report_after, silent_option

FINAL_LOSSES = ["elastic-arc+", "elastic-cos+", "elastic-arc", "elastic-cos", "arcface", "cosface"]


def _training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by both training commands (unset ones take the per-device default)."""
    options = [
        click.option("--out", required=True, type=click.Path(), help="Run directory to write."),
        click.option("--backbone", default=None, help="compact | mobilefacenet | iresnet18/34/50/100 [default: compact on CPU, iresnet50 on GPU]"),
        click.option("--input-size", type=int, default=None, help="Model input side in pixels [default: 64 on CPU, 112 on GPU]."),
        click.option("--embedding-size", type=int, default=None, help="Embedding length [default: 128 on CPU, 512 on GPU]."),
        click.option("--crop", type=int, default=None, help="Centre square crop (source pixels) before resizing, e.g. 128 for LFW."),
        click.option("--margin", type=float, default=None, help="Margin (radians for angular margins) [default: the head's]."),
        click.option("--scale", type=float, default=None, help="Logit scale s [default: 64]."),
        click.option("--sample-rate", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True, help="Partial FC: fraction of classes per step."),
        click.option("--epochs", type=int, default=20, show_default=True),
        click.option("--batch-size", type=int, default=None, help="Per-process batch [default: 64 on CPU, 128 on GPU]."),
        click.option("--lr", type=float, default=0.1, show_default=True),
        click.option("--warmup-epochs", type=float, default=1.0, show_default=True),
        click.option("--schedule", type=click.Choice(["poly", "cosine", "constant"]), default="poly", show_default=True),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--grad-clip", type=float, default=5.0, show_default=True, help="Gradient-norm clip on the backbone (0: off)."),
        click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True, help="Mixed precision (auto: fp16/bf16 on CUDA, off on CPU)."),
        click.option("--channels-last/--no-channels-last", default=None, help="[default: on with CUDA]"),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the backbone (CUDA)."),
        click.option("--device", default=None, help="cpu | cuda | cuda:N [default: cuda when available]."),
        click.option("--workers", type=int, default=0, show_default=True, help="Decoding worker processes."),
        click.option("--no-cache", is_flag=True, help="Decode images every epoch instead of once into the decode cache."),
        click.option("--cache-dir", type=click.Path(), default=None, help="Decode cache folder [default: ~/.cache/cleanface or $CLEANFACE_CACHE]."),
        click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Steps between checkpoints (0: every epoch)."),
        click.option("--val", "val_pairs", type=click.Path(exists=True), default=None, help="Verification pairs (LFW pairs.txt format or insightface .bin) evaluated at the end."),
        click.option("--val-images", type=click.Path(exists=True), default=None, help="Image folder of the --val pairs."),
        click.option("--init", type=click.Path(exists=True), default=None,
                     help="Start from pretrained weights: a backbone state dict (.pth/.pt, e.g. an arcface_torch backbone.pth), "
                          "a cleanface model.pt or run directory; the head then starts at the class means of its embeddings."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--overwrite", is_flag=True, help="Delete --out and start again."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(kw: dict[str, Any]) -> dict[str, Any]:
    kw = dict(kw)
    kw["compile"] = kw.pop("compile_")
    kw["cache"] = not kw.pop("no_cache")
    if kw.get("grad_clip") == 0:
        kw["grad_clip"] = None
    return kw


def _finish_run(run: Path, no_report: bool) -> None:
    """Render the run's report (unless ``no_report``) and print its summary; only the first process under torchrun."""
    if os.environ.get("RANK", "0") != "0":
        return
    from cleanface.report.training import render_training_report

    report = None if no_report else render_report_after(run, render_training_report)
    summary = json.loads((run / "train_summary.json").read_text())
    table = Table(title=f"run {run}")
    table.add_column("")
    table.add_column("value", justify="right")
    final = summary.get("final", {})
    table.add_row("steps", str(summary["steps"]))
    table.add_row("time", f"{summary['elapsed_s']:.0f} s")
    if final:
        table.add_row("final loss / train accuracy", f"{final['loss']:.3f} / {100 * final['acc']:.1f}%")
    if "eval" in summary:
        table.add_row("verification accuracy", f"{100 * summary['eval']['accuracy']:.2f}% +- {100 * summary['eval']['accuracy_std']:.2f}")
    console.print(table)
    if report is not None:
        console.print(f"report: {report}", soft_wrap=True)


@click.command("train-subcenter")
@click.argument("data", type=click.Path(exists=True))
@click.option("--k", type=click.IntRange(1, 20), default=3, show_default=True, help="Sub-centers per identity.")
@_training_options
@no_report_option
@silent_option
@handle_errors
def train_subcenter_cmd(data: str, out: str, k: int, resume: bool, overwrite: bool, no_report: bool, silent: bool, **kw: Any) -> None:
    """Train a face model on DATA with sub-center ArcFace (K sub-centers per identity) for purification."""
    from cleanface.training.trainer import train_subcenter

    run = train_subcenter(data, out, k=k, resume=resume, overwrite=overwrite, silent=silent, **_settings(kw))
    _finish_run(run, no_report)


@click.command("train-final")
@click.argument("data", type=click.Path(exists=True))
@click.option("--loss", type=click.Choice(FINAL_LOSSES), default="elastic-arc+", show_default=True, help="Margin head of the final model.")
@click.option("--sigma", type=float, default=None, help="ElasticFace margin standard deviation [default: the head's].")
@_training_options
@no_report_option
@silent_option
@handle_errors
def train_final_cmd(data: str, out: str, loss: str, sigma: float | None, resume: bool, overwrite: bool, no_report: bool, silent: bool,
                    **kw: Any) -> None:
    """Train the final face model on (cleaned) DATA, ElasticFace-Arc+ by default."""
    from cleanface.training.trainer import train_final

    settings = _settings(kw)
    if sigma is not None:
        settings["sigma"] = sigma
    run = train_final(data, out, loss=loss, resume=resume, overwrite=overwrite, silent=silent, **settings)
    _finish_run(run, no_report)


@click.command("evaluate")
@click.argument("run", type=click.Path(exists=True))
@click.option("--pairs", required=True, type=click.Path(exists=True), help="Pairs file: LFW pairs.txt format or insightface .bin.")
@click.option("--images", type=click.Path(exists=True), default=None, help="Image folder of an LFW-format pairs file.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@silent_option
@handle_errors
def evaluate_cmd(run: str, pairs: str, images: str | None, device: str, as_json: bool, silent: bool) -> None:
    """Verification accuracy (10-fold), TAR@FAR and AUC of RUN (a run directory or its model.pt) on PAIRS."""
    from cleanface.eval.pairs import evaluate
    from cleanface.inference.run import load_run

    loaded = load_run(run, device=device)
    result = evaluate(loaded.backbone, pairs, images_root=images, size=int(loaded.config["input_size"]), crop=loaded.config.get("crop"), device=device, silent=silent)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "roc"}, indent=2))
        return
    table = Table(title=f"verification on {Path(pairs).name}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("pairs", str(result["num_pairs"]))
    table.add_row("accuracy (10-fold)", f"{100 * result['accuracy']:.2f}% +- {100 * result['accuracy_std']:.2f}")
    for far, tar in result["tar_at_far"].items():
        table.add_row(f"TAR @ FAR {far}", f"{100 * tar:.2f}%")
    table.add_row("AUC", f"{result['auc']:.4f}")
    console.print(table)


COMMANDS = [train_subcenter_cmd, train_final_cmd, evaluate_cmd]
