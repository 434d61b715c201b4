"""``cleanface purify``: drop, relabel and merge noisy labels with a trained sub-center run, or with embeddings alone.

``cleanface purify RUN DATA --out CLEAN`` takes the sub-centers of the run's head;
``cleanface purify DATA --embeddings E --out CLEAN`` estimates them by spherical k-means of
the given embeddings (``--k`` per identity). One positional argument without
``--embeddings``, or more than two, is a usage error (exit status 2).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cleanface._atomic import is_complete
from cleanface.purify.settings import DROP_RULES, IDENTITY_RULES, PurifySettings
from cleanface_cli._common import console, handle_errors, no_report_option, render_report_after, silent_option

_DEFAULTS = PurifySettings()


@click.command("purify")
@click.argument("inputs", nargs=-1, metavar="[RUN] DATA", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(), required=True, help="Output directory for the cleaned dataset and the decisions.")
@click.option("--drop-rule", type=click.Choice(DROP_RULES), default=_DEFAULTS.drop_rule, show_default=True,
              help="calibrated: drop images whose angle to the mean of their identity's other images is more typical of a wrong "
                   "label than of their own (threshold found from the data); angle: drop above --threshold degrees from the "
                   "dominant sub-center.")
@click.option("--noise-cut", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_DEFAULTS.noise_cut, show_default=True,
              help="calibrated rule: drop images whose estimated probability of a wrong label is at least this.")
@click.option("--rounds", type=click.IntRange(1, 5), default=None, show_default="2 with RUN, else 1",
              help="With RUN: after each round, train a new model (RUN's settings) on the images it kept and score the whole "
                   "input again (one more training per round); the rounds are kept in OUT/rounds.")
@click.option("--threshold", type=click.FloatRange(0, 180), default=_DEFAULTS.threshold, show_default=True,
              help="angle rule (and the fallback of the calibrated one): drop images more than this many degrees from their "
                   "identity's dominant sub-center.")
@click.option("--relabel/--no-relabel", default=_DEFAULTS.relabel, show_default=True,
              help="Move a dropped image to another identity whose dominant sub-center is much closer.")
@click.option("--relabel-angle", type=click.FloatRange(0, 180), default=_DEFAULTS.relabel_angle, show_default=True,
              help="Relabel only below this angle (degrees) to the other identity.")
@click.option("--relabel-margin", type=click.FloatRange(0, 180), default=_DEFAULTS.relabel_margin, show_default=True,
              help="... and at least this many degrees closer to it than to the own identity.")
@click.option("--merge-rule", type=click.Choice(IDENTITY_RULES), default=_DEFAULTS.merge_rule, show_default=True,
              help="calibrated: propose pairs of identities whose kept images look like one person (a probability calibrated "
                   "on each identity's own two halves); angle: dominant sub-centers closer than --merge-angle.")
@click.option("--merge-cut", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_DEFAULTS.merge_cut, show_default=True,
              help="calibrated merge rule: propose pairs at least this likely to be one person.")
@click.option("--merge-auto-cut", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_DEFAULTS.merge_auto_cut,
              show_default=True, help="calibrated merge rule: merge (with --merge) the proposals at least this likely; report the others.")
@click.option("--merge/--no-merge", default=_DEFAULTS.merge, show_default=True,
              help="Merge the strong merge proposals (--no-merge: only report them).")
@click.option("--merge-angle", type=click.FloatRange(0, 180), default=_DEFAULTS.merge_angle, show_default=True,
              help="angle merge rule: identities whose dominant sub-centers are closer than this (degrees) are grouped.")
@click.option("--split-rule", type=click.Choice(IDENTITY_RULES), default=_DEFAULTS.split_rule, show_default=True,
              help="calibrated: report identities whose kept images fall into two groups that look like two people (a "
                   "probability calibrated on random pairs of identities); angle: two strong sub-centers far apart.")
@click.option("--split-cut", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_DEFAULTS.split_cut, show_default=True,
              help="calibrated split rule: report identities at least this likely to hold two people.")
@click.option("--split/--no-split", default=_DEFAULTS.split, show_default=True,
              help="Make the second group of a reported split a new identity <name>#2 (else only report it).")
@click.option("--dedup", is_flag=True, help="Keep only the first image of each group of near-duplicates (cosine >= 0.98).")
@click.option("--drop-non-dominant", is_flag=True, help="Also drop images whose nearest sub-center is not the dominant one.")
@click.option("--keep-outlier-groups", is_flag=True, help="Make each coherent group among the dropped images (HDBSCAN) a new identity.")
@click.option("--format", "fmt", type=click.Choice(["folder", "manifest", "rec"]), default="folder", show_default=True,
              help="Format of the cleaned dataset.")
@click.option("--embeddings", type=click.Path(exists=True), default=None,
              help="Embeddings of DATA (skips embedding; required without RUN): a directory written by `cleanface embed`, "
                   "an .npy (images, dims) with --paths or NAME.paths.txt beside it, or a .csv/.parquet with a 'path' column "
                   "and an 'embedding' column or one column per dimension.")
@click.option("--paths", "paths", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Image path of each row of an --embeddings .npy, one per line, relative to DATA's root or absolute "
                   "(default: NAME.paths.txt beside NAME.npy).")
@click.option("--k", "k", type=click.IntRange(1, 1024), default=None,
              help="Without RUN: sub-centers per identity, estimated by spherical k-means of the embeddings (seeded).  [default: 3]")
@click.option("--truth", type=click.Path(exists=True), default=None,
              help="noise_truth.csv of DATA: adds precision/recall/F1 of the flags to the summary.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@click.option("--copy", is_flag=True, help="Copy image files instead of hard-linking them.")
@click.option("--device", default="cpu", show_default=True, help="Device for embedding: cpu, cuda, cuda:N.")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Run the passes over the embeddings on the Dask scheduler at ADDRESS (tcp://host:8786); the workers read the "
                   "embeddings from their file, which they must see at the same path. Same decisions as without. Needs "
                   "pip install 'cleanface[distributed]'.")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Run the passes over the embeddings on a local Dask cluster of this many worker processes (without --cluster).")
@click.option("--no-sanity-check", is_flag=True,
              help="Purify even when the model looks like it did not learn (collapsed embeddings, accuracy near chance, a merge of most identities).")
@click.option("--invert-subcenters", is_flag=True,
              help="With RUN: synthesise the face of every sub-center of every identity into OUT/inversions, shown on the report's "
                   "identity pages (costs CPU: about a second per sub-center at 64x64).")
@no_report_option
@silent_option
@handle_errors
def purify_cmd(
    inputs: tuple[str, ...], out: str, drop_rule: str, noise_cut: float, rounds: int | None, threshold: float, relabel: bool, relabel_angle: float, relabel_margin: float,
    merge_rule: str, merge_cut: float, merge_auto_cut: float, merge: bool, merge_angle: float, split_rule: str, split_cut: float,
    split: bool, dedup: bool, drop_non_dominant: bool, keep_outlier_groups: bool,
    fmt: str, embeddings: str | None, paths: str | None, k: int | None, truth: str | None, overwrite: bool, copy: bool, device: str,
    no_sanity_check: bool, no_report: bool, silent: bool, cluster: str | None = None, workers: int | None = None,
    invert_subcenters: bool = False,
) -> None:
    """Clean DATA with the sub-center model of RUN; write the cleaned dataset and a decision per image to OUT.

    Without RUN (cleanface purify DATA --embeddings E --out OUT) the sub-centers are
    estimated from the embeddings E of DATA by spherical k-means (--k per identity), e.g.
    for embeddings of a pretrained model or another tool.

    Each image is compared with the mean of its identity's other images; those more
    likely mislabelled than not (a threshold calibrated on the data) are dropped, or
    relabelled when they clearly belong to another identity; pairs of identities that
    look like one person are proposed (and merged when the evidence is strong), and
    identities that look like two people are reported (split with --split). OUT holds the cleaned dataset, decisions.csv,
    summary.json, analysis.npz and the report (report/index.html).
    """
    from cleanface.pipeline.rounds import DEFAULT_ROUNDS
    from cleanface.purify.runner import DEFAULT_K, purify, purify_from_embeddings
    from cleanface.report.purify import render_purify_report

    run, data = _run_and_data(inputs, embeddings=embeddings, k=k)

    _refuse_complete_without_report(out, overwrite=overwrite, no_report=no_report)
    settings = PurifySettings(
        drop_rule=drop_rule, noise_cut=noise_cut, threshold=threshold, relabel=relabel, relabel_angle=relabel_angle, relabel_margin=relabel_margin, merge=merge,
        merge_angle=merge_angle, merge_rule=merge_rule, merge_cut=merge_cut, merge_auto_cut=merge_auto_cut, split_rule=split_rule,
        split_cut=split_cut, split=split, dedup=dedup, drop_non_dominant=drop_non_dominant, keep_outlier_groups=keep_outlier_groups,
        sanity_check=not no_sanity_check,
    )
    if rounds is None:
        rounds = DEFAULT_ROUNDS if run is not None and embeddings is None else 1
    if rounds > 1 and (run is None or embeddings is not None):
        raise click.UsageError("--rounds needs a training run RUN to re-train, and embeds with each round's model (no --embeddings)")
    with _runner(cluster, workers) as runner:
        if rounds > 1:
            from cleanface.pipeline.rounds import purify_in_rounds

            result = purify_in_rounds(run, data, out, rounds=rounds, settings=settings, fmt=fmt, truth=truth, overwrite=overwrite, copy=copy,
                                      device=device, silent=silent, runner=runner)
        elif run is None:
            result = purify_from_embeddings(data, embeddings, out, paths=paths, k=DEFAULT_K if k is None else k, settings=settings, fmt=fmt,
                                            truth=truth, overwrite=overwrite, copy=copy, silent=silent, runner=runner)
        else:
            result = purify(run, data, out, settings=settings, fmt=fmt, embeddings=embeddings, paths=paths, truth=truth, overwrite=overwrite,
                            copy=copy, device=device, silent=silent, runner=runner)
    if invert_subcenters:
        _invert_subcenters(run, data, result, rounds=rounds, device=device, silent=silent)
    summary = json.loads((result / "summary.json").read_text())
    report = None if no_report else render_report_after(result, render_purify_report, silent=silent)  # images read by the decisions' locations
    console.print(summary_table(summary))
    console.print(f"wrote {result}", soft_wrap=True)
    if report is not None:
        console.print(f"report: {report}", soft_wrap=True)
    console.print(f"review the decisions in the browser: cleanface review {result}; then cleanface apply {result} --overrides overrides.json --out FINAL",
                  soft_wrap=True)


def _invert_subcenters(run: str | None, data: str, result: Path, *, rounds: int, device: str, silent: bool) -> Path:
    """Every sub-center of the model that decided (the last round's) inverted into ``result/inversions``, from the average face
    of images of the input (the folder where the purify report finds them)."""
    from cleanface.inversion.identities import invert_identities
    from cleanface.report.inversions import DEFAULT_FOLDER

    if run is None:
        raise click.UsageError("--invert-subcenters needs a training run RUN: embeddings alone have no network to invert")
    model = Path(result) / "rounds" / f"run-{rounds}" if rounds > 1 else Path(run)
    return invert_identities(model, [], Path(result) / DEFAULT_FOLDER, all_identities=True, sub_centers=True, purify_dir=result,
                             data=data, device=device, overwrite=True, silent=silent)


def _runner(cluster: str | None, workers: int | None) -> Any:
    """The runner of the passes over the embeddings: None (this process), or a Dask cluster (``--cluster`` / ``--workers``)."""
    if cluster is None and workers is None:
        return contextlib.nullcontext(None)
    from cleanface.purify.shards import connect

    return connect(cluster, workers=workers or 2)


def _run_and_data(inputs: tuple[str, ...], *, embeddings: str | None, k: int | None) -> tuple[str | None, str]:
    """RUN (None without one) and DATA from the positional arguments; a usage error (exit status 2) when they do not fit."""
    if len(inputs) == 2:
        run, data = inputs
        if not os.path.isdir(run):
            raise click.BadParameter(f"{run!r} is not a directory: give a training run directory, or only DATA with --embeddings", param_hint="RUN")
        if k is not None:
            raise click.UsageError("--k applies only without RUN: a run's head has its own sub-centers")
        return run, data
    if len(inputs) == 1:
        if embeddings is None:
            raise click.UsageError("without RUN, purify needs --embeddings E (embeddings of DATA; sub-centers are then estimated from them "
                                   "by k-means): cleanface purify DATA --embeddings E --out OUT, or cleanface purify RUN DATA --out OUT")
        return None, inputs[0]
    raise click.UsageError(f"expected RUN DATA, or DATA --embeddings E; got {len(inputs)} arguments")


def _refuse_complete_without_report(out: str, *, overwrite: bool, no_report: bool) -> None:
    """A purify killed while rendering its report left a complete output: say how to finish it instead of "not empty"."""
    if overwrite or no_report or not is_complete(out) or (Path(out) / "report" / "index.html").is_file():
        return
    raise click.ClickException(f"{out} is a complete purify output without its report (interrupted while rendering it?); "
                               f"run `cleanface report {out}` to render it, or pass --overwrite to purify again")


def summary_table(summary: dict) -> Table:
    """A rich table of the counts in ``summary.json``."""
    table = Table(title="purify", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("images", f"{summary['images_before']} -> {summary['images_after']}")
    table.add_row("identities", f"{summary['identities_before']} -> {summary['identities_after']}")
    subcenters = summary.get("subcenters") or {}
    if subcenters.get("source") == "kmeans":
        table.add_row("sub-centers", f"k-means of the embeddings (K={subcenters['k']}, seed {subcenters['seed']})")
    for action, count in summary["actions"].items():
        table.add_row(f"  {action}", str(count))
    calibration = summary.get("calibration") or {}
    if calibration.get("used"):
        cut = calibration["threshold"]
        table.add_row("drop threshold (calibrated)", f"{'none reached' if cut is None else f'{cut:.1f}°'} to the other images' mean, "
                      f"estimated noise {calibration['noise_rate']:.1%}")
        if calibration.get("warning"):
            table.add_row("[yellow]warning[/yellow]", calibration["warning"])
    else:
        advised = summary.get("advised_threshold")
        table.add_row("threshold (advised)", f"{summary['threshold']:g} ({'n/a' if advised is None else f'{advised:.1f}'})")
    merged = sum(1 for m in summary["merges"] if m.get("merged"))
    table.add_row("merge proposals (merged) / split proposals", f"{len(summary['merges'])} ({merged}) / {len(summary['splits'])}")
    for rule, fit in (summary.get("identity_calibration") or {}).items():
        if fit.get("warning"):
            table.add_row(f"[yellow]{rule} warning[/yellow]", fit["warning"])
        if fit.get("auto_merge_reason"):
            table.add_row("merges", fit["auto_merge_reason"])
    table.add_row("duplicate pairs / outlier groups", f"{summary['duplicate_pairs']} / {len(summary['outlier_groups'])}")
    if summary.get("non_finite"):
        table.add_row("non-finite embeddings", str(summary["non_finite"]))
    overall = (summary.get("truth") or {}).get("overall")
    if overall:
        table.add_row("flags vs truth (P / R / F1)", f"{overall['precision']:.3f} / {overall['recall']:.3f} / {overall['f1']:.3f}")
    return table


COMMANDS = [purify_cmd]
