"""``cleanface overlap``: the identities and images of one dataset that are also in another.

``cleanface overlap A B --out OUT --run RUN`` embeds both datasets with the run's backbone;
``cleanface overlap A B --out OUT --embeddings-a EA --embeddings-b EB`` takes embeddings of
both from one model. Giving both forms, or neither, is a one-line error.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from cleanface_cli._common import console, handle_errors, no_report_option, render_report_after, silent_option

_EMBEDDINGS_HELP = ("(skips embedding; with the other dataset's, instead of --run): a directory written by `cleanface embed`, an .npy "
                    "(images, dims) with --paths-{side} or NAME.paths.txt beside it, or a .csv/.parquet with a 'path' column and an "
                    "'embedding' column or one column per dimension. Both must come from one model.")


@click.command("overlap")
@click.argument("data_a", metavar="DATA_A", type=click.Path(exists=True))
@click.argument("data_b", metavar="DATA_B", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(), required=True, help="Output directory for identities.csv, images.csv, summary.json and the report.")
@click.option("--run", "run", type=click.Path(exists=True), default=None,
              help="Training run whose backbone embeds both datasets (its input size and crop).")
@click.option("--embeddings-a", type=click.Path(exists=True), default=None, help="Embeddings of DATA_A " + _EMBEDDINGS_HELP.format(side="a"))
@click.option("--embeddings-b", type=click.Path(exists=True), default=None, help="Embeddings of DATA_B " + _EMBEDDINGS_HELP.format(side="b"))
@click.option("--paths-a", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Image path of each row of an --embeddings-a .npy, one per line, relative to DATA_A's root or absolute.")
@click.option("--paths-b", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Image path of each row of an --embeddings-b .npy, one per line, relative to DATA_B's root or absolute.")
@click.option("--cut", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="An identity of A is shared with its nearest identity of B when the calibrated probability that the two are one person reaches this.")
@click.option("--dup-cos", type=click.FloatRange(0, 1, min_open=True), default=0.98, show_default=True,
              help="An image of A is also in B when its cosine to an image of B reaches this.")
@click.option("--device", default="cpu", show_default=True, help="Device for embedding with --run: cpu, cuda, cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@no_report_option
@silent_option
@handle_errors
def overlap_cmd(data_a: str, data_b: str, out: str, run: str | None, embeddings_a: str | None, embeddings_b: str | None, paths_a: str | None,
                paths_b: str | None, cut: float, dup_cos: float, device: str, overwrite: bool, no_report: bool, silent: bool) -> None:
    """Find the identities and images of DATA_A that are also in DATA_B; write them to OUT.

    Each identity of A is compared with its nearest identity of B by the similarity of
    their images; the probability that the two are one person is calibrated on the data
    (random halves of each identity are the same-person reference). Images of A whose
    cosine to an image of B reaches --dup-cos are listed in pairs. Neither dataset is
    written. OUT holds identities.csv, images.csv, summary.json and the report
    (report/index.html).
    """
    from cleanface.purify.overlap_runner import overlap
    from cleanface.report.overlap import render_overlap_report

    result = overlap(data_a, data_b, out, run=run, embeddings_a=embeddings_a, embeddings_b=embeddings_b, paths_a=paths_a, paths_b=paths_b,
                     cut=cut, dup_cos=dup_cos, device=device, overwrite=overwrite, silent=silent)
    summary = json.loads((result / "summary.json").read_text())
    report = None if no_report else render_report_after(result, render_overlap_report, silent=silent)
    console.print(summary_table(summary, result, report))


def summary_table(summary: dict, out: object, report: object | None) -> Table:
    """A rich table of the counts in an overlap's ``summary.json`` and where its files are."""
    counts, cal = summary.get("counts") or {}, summary.get("calibration") or {}
    table = Table(title="overlap", show_header=True)
    table.add_column("", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("identities of A shared with B", f"{counts.get('shared_identities', 0):,} of {counts.get('identities_a', 0):,}")
    pairs = counts.get("image_pairs", 0)
    table.add_row("images of A found in B", f"{counts.get('images_a_in_b', 0):,} of {counts.get('images_a', 0):,} "
                  f"({pairs:,} {'pair' if pairs == 1 else 'pairs'} of images)")
    if cal.get("used"):
        table.add_row("calibration", f"estimated {cal.get('shared_rate', cal.get('noise_rate', 0.0)):.1%} of A's identities in B")
    else:
        table.add_row("calibration", f"[yellow]not calibrated[/yellow]: {cal.get('reason', 'no reason recorded')}")
    table.add_row("files", f"{out}/identities.csv, {out}/images.csv")
    table.add_row("report", str(report) if report is not None else f"not rendered: run `cleanface report {out}`")
    return table


COMMANDS = [overlap_cmd]
