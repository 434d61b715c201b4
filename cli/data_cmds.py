"""``cleanface convert`` and ``cleanface info``: move a dataset between formats, describe it."""

from __future__ import annotations

import json

import click
from rich.table import Table

from cleanface.data.info import dataset_info
from cleanface.data.open import FORMATS, open_dataset, write_dataset
from cleanface_cli._common import console, handle_errors, silent_option


def _open(path: str, follow_symlinks: bool, silent: bool):
    kw = {"silent": silent}
    if follow_symlinks:
        kw["follow_symlinks"] = True
    return open_dataset(path, **kw)


@click.command("convert")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.option("--copy", is_flag=True, help="Copy image files instead of hard-linking them.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it is not empty.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks leaving an image-folder SRC.")
@silent_option
@handle_errors
def convert(src: str, dst: str, fmt: str, copy: bool, overwrite: bool, follow_symlinks: bool, silent: bool) -> None:
    """Convert the dataset SRC (image folder, CSV manifest, RecordIO or saved .npz index) to DST.

    DST is a directory: <identity>/<image> folders (folder), manifest.csv plus
    images/ (manifest), or train.rec + train.idx + identities.txt (rec).
    """
    index = _open(src, follow_symlinks, silent)
    out = write_dataset(index, dst, fmt, copy=copy, overwrite=overwrite, silent=silent)
    skipped = f"; {len(index.bad_files)} bad files skipped (see `cleanface info {src}`)" if index.bad_files else ""
    console.print(f"wrote {len(index)} images of {index.num_identities} identities to {out} ({fmt}){skipped}", soft_wrap=True)


@click.command("info")
@click.argument("dataset", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks leaving an image-folder DATASET.")
@click.option("--max-bad", type=int, default=20, show_default=True, help="Bad files to list in the table.")
@silent_option
@handle_errors
def info(dataset: str, as_json: bool, follow_symlinks: bool, max_bad: int, silent: bool) -> None:
    """Describe DATASET: identities, images, images per identity and skipped files."""
    summary = dataset_info(_open(dataset, follow_symlinks, silent or as_json))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{summary['kind']} dataset {summary['root']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    per = summary["images_per_identity"]
    table.add_row("identities", f"{summary['identities']:,}")
    table.add_row("images", f"{summary['images']:,}")
    table.add_row("images per identity", f"min {per['min']}  median {per['median']:g}  mean {per['mean']:.2f}  max {per['max']}")
    for label, count in summary["histogram"].items():
        table.add_row(f"  identities with {label} images", f"{count:,}")
    table.add_row("bad files", f"{summary['bad_files']:,}")
    for reason, count in summary["bad_reasons"].items():
        table.add_row(f"  {reason}", f"{count:,}")
    console.print(table)
    for bad in summary["bad_list"][:max_bad]:
        console.print(f"  {bad['location']}: {bad['reason']}", soft_wrap=True, markup=False, highlight=False)
    if summary["bad_files"] > max_bad:
        console.print(f"  ... and {summary['bad_files'] - max_bad} more (use --json for all)")


COMMANDS = [convert, info]
