"""``cleanface run``: run a pipeline file stage by stage."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from cleanface.errors import PipelinePaused
from cleanface.pipeline import stages as _stages  # noqa: F401  (registers the stage kinds)
from cleanface.pipeline.engine import plan_pipeline, run_pipeline
from cleanface.pipeline.spec import apply_overrides, load_pipeline
from cleanface.pipeline.summary import pipeline_summary
from cleanface_cli._common import console, handle_errors, silent_option

PAUSED_STATUS = 3  # exit status of a pipeline that waits for a person (a review), distinct from an error (1)


def _plan_table(plan) -> Table:
    table = Table(title="pipeline plan")
    for column in ("stage", "kind", "fingerprint", "action"):
        table.add_column(column)
    for item in plan:
        table.add_row(item.name, item.kind, item.fingerprint, item.action)
    return table


def _summary_table(rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title="cleanface run: results")
    table.add_column("measure")
    table.add_column("before / noisy", justify="right")
    table.add_column("after / purified", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


@click.command("run")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workdir", "-w", type=click.Path(file_okay=False, path_type=Path), required=True, help="Where each stage writes its directory.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a stage setting (repeatable).")
@click.option("--from", "from_stage", metavar="STAGE", help="Re-run from this stage on (earlier stages are reused).")
@click.option("--until", "until_stage", metavar="STAGE", help="Stop after this stage.")
@click.option("--dry-run", is_flag=True, help="Print the plan (skip / run / resume per stage) and stop.")
@silent_option
@handle_errors
def run_command(pipeline: Path, workdir: Path, overrides: tuple[str, ...], from_stage: str | None, until_stage: str | None, dry_run: bool, silent: bool) -> None:
    """Run PIPELINE (a TOML file) in WORKDIR, skipping stages that are up to date.

    Example: cleanface run pipelines/demo.toml --workdir demo-run --set train-subcenter.epochs=5
    """
    spec = apply_overrides(load_pipeline(pipeline), list(overrides))
    if dry_run:
        console.print(_plan_table(plan_pipeline(spec, workdir, from_stage=from_stage, until_stage=until_stage)))
        return
    try:
        result = run_pipeline(
            spec,
            workdir,
            from_stage=from_stage,
            until_stage=until_stage,
            silent=silent,
            on_stage=lambda planned: console.rule(f"[bold]{planned.name}[/] ({planned.kind}, {planned.action})"),
        )
    except PipelinePaused as paused:  # not a failure: the finished stages are kept, a re-run continues
        console.print(f"[yellow]paused[/]: {paused}")
        sys.exit(PAUSED_STATUS)
    skipped = [p.name for p in result.plan if p.action == "skip"]
    if skipped:
        console.print(f"up to date, skipped: {', '.join(skipped)}")
    summary = pipeline_summary(spec, result.outputs)
    if summary.rows:
        console.print(_summary_table(summary.rows))
    if summary.report:
        console.print(f"pipeline report: [bold]{summary.report}[/]")


COMMANDS = [run_command]
