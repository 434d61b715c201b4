"""``cleanface apply``: a purify output and a reviewer's overrides to the final dataset."""

from __future__ import annotations

import json

import click
from rich.table import Table

from cleanface_cli._common import console, handle_errors, no_report_option, render_report_after, silent_option


@click.command("apply")
@click.argument("clean", metavar="CLEAN", type=click.Path(exists=True, file_okay=False))
@click.option("--overrides", "overrides", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The reviewer's overrides.json (exported by the review page, `cleanface review CLEAN`).")
@click.option("--out", "out", type=click.Path(), required=True, help="Output directory for the final dataset and its decisions.")
@click.option("--data", "data", type=click.Path(exists=True), default=None,
              help="The input dataset purify decided on (default: the one CLEAN/run_info.json names).")
@click.option("--format", "fmt", type=click.Choice(("folder", "manifest", "rec")), default=None, show_default="CLEAN's",
              help="Format of the final dataset.")
@click.option("--copy", is_flag=True, help="Copy image files instead of hard-linking them.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@no_report_option
@silent_option
@handle_errors
def apply_cmd(clean: str, overrides: str, out: str, data: str | None, fmt: str | None, copy: bool, overwrite: bool, no_report: bool,
              silent: bool) -> None:
    """Apply a review's OVERRIDES to the purify output CLEAN; write the final dataset to OUT.

    Merges and splits accepted or rejected apply first, then each image's keep, drop,
    move or accept. Every override is checked against CLEAN before anything is written;
    CLEAN and the input dataset are never modified. OUT holds the dataset, decisions.csv
    (reason "reviewed" on every changed row, purify's decision beside it), summary.json,
    a copy of the overrides and the report.
    """
    from cleanface.purify.apply import apply_overrides
    from cleanface.report.purify import render_purify_report

    result = apply_overrides(clean, overrides, out, data=data, fmt=fmt, copy=copy, overwrite=overwrite, silent=silent)
    summary = json.loads((result / "summary.json").read_text())
    report = None if no_report else render_report_after(result, render_purify_report, silent=silent)
    console.print(summary_table(summary, result, report))


def summary_table(summary: dict, out: object, report: object | None) -> Table:
    """A rich table of what a review changed and where the final dataset is."""
    review = summary.get("review") or {}
    images, merges, splits = (review.get(k) or {} for k in ("images", "merges", "splits"))
    table = Table(title="apply", show_header=True)
    table.add_column("", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("images", f"{summary.get('images_before', 0):,} -> {summary.get('images_after', 0):,}")
    table.add_row("identities", f"{summary.get('identities_before', 0):,} -> {summary.get('identities_after', 0):,}")
    table.add_row("reviewed images", f"{images.get('overridden', 0):,} changed, {images.get('accepted', 0):,} accepted as purify decided")
    table.add_row("merges", f"{merges.get('accepted', 0)} accepted, {merges.get('rejected', 0)} rejected")
    table.add_row("splits", f"{splits.get('accepted', 0)} accepted, {splits.get('rejected', 0)} rejected")
    table.add_row("decisions", f"{out}/decisions.csv")
    table.add_row("report", str(report) if report is not None else f"not rendered: run `cleanface report {out}`")
    return table


COMMANDS = [apply_cmd]
