"""``cleanface review``: a page where a person confirms or overrides purify's decisions in the browser.

``cleanface review CLEAN`` writes ``CLEAN/review/index.html``, a static page that works
from ``file://`` without a server; its **Export** button downloads ``overrides.json``,
which ``cleanface apply`` applies.
"""

from __future__ import annotations

from pathlib import Path

import click

from cleanface_cli._common import console, err_console, handle_errors, silent_option


@click.command("review")
@click.argument("clean", metavar="CLEAN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the review page (default: CLEAN/review).")
@click.option("--open", "open_page", is_flag=True, help="Open the page in the web browser when it is written.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Read images from this dataset (by sample index) instead of the decisions' locations.")
@click.option("--placeholder-thumbs", is_flag=True, help="Grey boxes instead of thumbnails (no image is read).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=50, show_default=True,
              help="Cards per page of a queue (the page loads one page at a time).")
@silent_option
@handle_errors
def review(clean: Path, out: Path | None, open_page: bool, data: Path | None, placeholder_thumbs: bool, chunk_size: int, silent: bool) -> None:
    """Write a page to review the decisions of the purify output CLEAN in the browser.

    The page lists, queue by queue, the drops (least certain first), the kept images
    with a high noise score, the relabels, the merge and split proposals and the
    near-duplicate pairs. Keep, drop, move or accept each image; accept or reject each
    proposal (keys: j/k to move, y d m a r to decide, u to undo, ? for help). The work
    is saved in the browser; Export downloads overrides.json for `cleanface apply`.
    """
    from cleanface.report.review import render_review

    index = render_review(clean, out=out, data=data, placeholder_thumbs=placeholder_thumbs, chunk_size=chunk_size, silent=silent)
    console.print(f"review page: [bold]{index}[/]", soft_wrap=True)
    if open_page:
        import webbrowser

        try:
            opened = webbrowser.open(index.resolve().as_uri())
        except Exception:  # noqa: BLE001  (no browser is not a failed command)
            opened = False
        if not opened:
            err_console.print(f"[yellow]warning:[/] could not open a web browser; open {index} yourself", soft_wrap=True)


COMMANDS = [review]
