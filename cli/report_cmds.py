"""``cleanface report``: regenerate the HTML report of a run, purify or pipeline directory."""

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
@click.option("--placeholders", is_flag=True, help="Purify reports: grey boxes instead of thumbnails (no image is read).")
@silent_option
@handle_errors
def report_command(directory: Path, data: Path | None, max_thumbs: int, placeholders: bool, silent: bool) -> None:
    """Regenerate the report of DIRECTORY: a training run, a purify output or a pipeline working directory.

    The kind is detected from the files inside; the report is written to DIRECTORY/report/index.html.
    """
    from cleanface.report.detect import detect_report_kind, render_report

    kind = detect_report_kind(directory)
    kwargs = {"data": data, "max_thumbs_per_page": max_thumbs, "placeholder_thumbs": placeholders, "silent": silent} if kind == "purify" else {}
    if kind != "purify" and (data is not None or placeholders):
        raise click.UsageError("--data and --placeholders apply to purify output directories only")
    path = render_report(directory, **kwargs)
    console.print(f"{kind} report: [bold]{path}[/]")


COMMANDS = [report_command]
