"""``cleanface report``: regenerate the HTML report of a run, purify, overlap or pipeline directory."""

from __future__ import annotations

from pathlib import Path

import click

from cleanface_cli._common import console, handle_errors, silent_option


@click.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Purify reports: read images from this dataset (by sample index) instead of the decisions' locations.")
@click.option("--max-thumbs", type=click.IntRange(min=1), default=240, show_default=True,
              help="Purify reports: most thumbnails on one page.")
@click.option("--inversions", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Purify reports: show the faces synthesised from each sub-center (a cleanface invert --sub-centers folder) "
                   "on the identity pages [default: DIRECTORY/inversions when there is one].")
@click.option("--placeholders", is_flag=True, help="Purify and overlap reports: grey boxes instead of thumbnails (no image is read).")
@silent_option
@handle_errors
def report_command(directory: Path, data: Path | None, max_thumbs: int, inversions: Path | None, placeholders: bool, silent: bool) -> None:
    """Regenerate the report of DIRECTORY: a training run, a purify or overlap output, or a pipeline working directory.

    The kind is detected from the files inside; the report is written to DIRECTORY/report/index.html.
    """
    from cleanface.report.detect import detect_report_kind, render_report

    kind = detect_report_kind(directory)
    kwargs: dict = {}
    if kind == "purify":
        kwargs = {"data": data, "max_thumbs_per_page": max_thumbs, "placeholder_thumbs": placeholders, "inversions": inversions, "silent": silent}
    elif kind == "overlap":
        kwargs = {"placeholder_thumbs": placeholders, "silent": silent}
    if kind != "purify" and (data is not None or inversions is not None):
        raise click.UsageError("--data and --inversions apply to purify output directories only")
    if kind not in ("purify", "overlap") and placeholders:
        raise click.UsageError("--placeholders applies to overlap and purify output directories only")
    path = render_report(directory, **kwargs)
    console.print(f"{kind} report: [bold]{path}[/]")


COMMANDS = [report_command]
