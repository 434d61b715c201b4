"""``cleanface make-synthetic``, ``make-pairs`` and ``inject-noise``: test data with known truth."""

from __future__ import annotations

import click

from cleanface.data.noise import inject_noise
from cleanface.data.open import open_dataset
from cleanface.data.synthetic import make_pairs, make_synthetic
from cleanface_cli._common import console, handle_errors, seed_option, silent_option


@click.command("make-synthetic")
@click.argument("out", type=click.Path())
@click.option("--identities", type=click.IntRange(min=1), default=100, show_default=True, help="Number of synthetic people.")
@click.option("--per-identity", type=click.IntRange(min=1), default=20, show_default=True, help="Images per person.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="Image side in pixels.")
@click.option("--first-identity", type=click.IntRange(min=0), default=0, show_default=True, help="Number of the first identity (for disjoint held-out sets).")
@click.option("--name-prefix", default="id", show_default=True, help="Identity name prefix: folders are <prefix>_<NNNN>.")
@click.option("--pairs", "num_pairs", type=click.IntRange(min=0), default=0, help="Also write OUT/pairs.txt with this many verification pairs (half matched).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@seed_option
@silent_option
@handle_errors
def make_synthetic_cmd(out: str, identities: int, per_identity: int, size: int, first_identity: int, name_prefix: str, num_pairs: int, overwrite: bool, seed: int, silent: bool) -> None:
    """Draw synthetic faces into the image folder OUT (<id>/<id>_<NNNN>.png).

    Each identity has its own face geometry and colours; each image adds pose,
    expression, lighting, colour cast, background, blur and noise. The same seed
    writes the same bytes.
    """
    path = make_synthetic(out, identities=identities, per_identity=per_identity, size=size, seed=seed, first_identity=first_identity, name_prefix=name_prefix, overwrite=overwrite, silent=silent)
    console.print(f"wrote {identities * per_identity} images of {identities} identities to {path}", soft_wrap=True)
    if num_pairs:
        pairs = make_pairs(path, path / "pairs.txt", num_pairs=num_pairs, seed=seed)
        console.print(f"wrote {num_pairs // 2 * 2} pairs to {pairs}", soft_wrap=True)


@click.command("make-pairs")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--num-pairs", type=click.IntRange(min=2), default=1000, show_default=True, help="Total pairs, half matched and half mismatched.")
@click.option("--folds", type=click.IntRange(min=1), default=1, show_default=True, help="Folds (more than 1 writes the pairs.txt layout).")
@seed_option
@handle_errors
def make_pairs_cmd(folder: str, out: str, num_pairs: int, folds: int, seed: int) -> None:
    """Write an LFW-style pairs file OUT over FOLDER, whose images are named <id>/<id>_<NNNN>.<ext>."""
    path = make_pairs(folder, out, num_pairs=num_pairs, seed=seed, folds=folds)
    console.print(f"wrote {num_pairs // (2 * folds) * 2 * folds} pairs to {path}", soft_wrap=True)


@click.command("inject-noise")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--close-set", type=float, default=0.0, show_default=True, help="Fraction of output images relabelled to another identity of the set.")
@click.option("--open-set", type=float, default=0.0, show_default=True, help="Fraction of output images that are outside faces given a set identity.")
@click.option("--outside", type=click.Path(), default=None, help="Dataset of other people, the source of open-set faces.")
@click.option("--merge-identities", type=click.IntRange(min=0), default=0, show_default=True, help="Pairs of identities to merge under one label.")
@click.option("--split-identities", type=click.IntRange(min=0), default=0, show_default=True, help="Identities to split into two labels.")
@click.option("--copy", is_flag=True, help="Copy image files instead of linking them.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it is not empty.")
@seed_option
@silent_option
@handle_errors
def inject_noise_cmd(src: str, dst: str, close_set: float, open_set: float, outside: str | None, merge_identities: int, split_identities: int, copy: bool, overwrite: bool, seed: int, silent: bool) -> None:
    """Write a noisy copy of the dataset SRC as the image folder DST, with DST/noise_truth.csv.

    SRC (and --outside) may be any dataset cleanface reads. Rates are fractions of the
    output images; SRC is never modified.
    """
    source = open_dataset(src, silent=silent)
    other = open_dataset(outside, silent=silent) if outside else None
    result = inject_noise(
        source, dst, close_set=close_set, open_set=open_set, outside=other, merge_identities=merge_identities,
        split_identities=split_identities, seed=seed, copy=copy, overwrite=overwrite, silent=silent,
    )
    detail = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"wrote {result.images} images of {result.identities} identities to {result.out} ({detail}); truth in {result.truth}", soft_wrap=True)


COMMANDS = [make_synthetic_cmd, make_pairs_cmd, inject_noise_cmd]
