"""``cleanface invert``: synthesise the faces a trained model sees in sub-centers or embeddings."""

from __future__ import annotations

import json

import click

from cleanface.inversion.identities import invert_identities
from cleanface_cli._common import console, handle_errors, seed_option, silent_option


@click.command("invert")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--identity", "identities", multiple=True, help="Identity name of the run (repeat for several).")
@click.option("--sub-centers", is_flag=True, help="One image per sub-center (else one per identity: its dominant sub-center, or its centre).")
@click.option("--purify", "purify_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Purify output directory: marks the dominant sub-center and counts its votes.")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None, help="A .npy file of shape (N, D): invert its rows.")
@click.option("--rows", default=None, help="Rows of --embeddings to invert, e.g. 0,3,10-19 (default: all, at most 1000).")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Output folder for the PNGs and inversion.json.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Optimisation steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True, help="Adam learning rate (cosine decay).")
@click.option("--bn-weight", type=click.FloatRange(min=0), default=0.002, show_default=True, help="Weight of the BatchNorm prior.")
@click.option("--no-bn-prior", is_flag=True, help="Turn the BatchNorm prior off (same as --bn-weight 0).")
@click.option("--tv-weight", type=click.FloatRange(min=0), default=0.05, show_default=True, help="Weight of the smoothness (total variation) prior.")
@click.option("--jitter", type=click.IntRange(min=0), default=None, help="Largest random shift per step in pixels [default: image side // 32, at least 1].")
@click.option("--flip/--no-flip", default=False, show_default=True, help="Mirror the images at random during the optimisation.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Targets optimised together (they share the BN statistics).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@seed_option
@silent_option
@handle_errors
def invert_cmd(
    run: str, identities: tuple[str, ...], sub_centers: bool, purify_dir: str | None, embeddings: str | None, rows: str | None,
    out_dir: str, steps: int, lr: float, bn_weight: float, no_bn_prior: bool, tv_weight: float,
    jitter: int | None, flip: bool, batch_size: int, device: str, overwrite: bool,
    seed: int, silent: bool,
) -> None:
    """Synthesise images whose embeddings under the model of RUN match its sub-centers or given embeddings.

    Starting from noise, the pixels are optimised so that the image's embedding points
    along the target while the network's BatchNorm statistics match those of its
    training data. Writes OUT/<identity>/subcenter_<k>.png (or center.png),
    OUT/embeddings/row_<i>.png and OUT/inversion.json with the cosine reached by each image.
    """
    if not identities and embeddings is None:
        raise click.UsageError("give at least one --identity or an --embeddings file")
    if rows is not None and embeddings is None:
        raise click.UsageError("--rows needs --embeddings")
    out = invert_identities(
        run, list(identities), out_dir, sub_centers=sub_centers, purify_dir=purify_dir, embeddings=embeddings, rows=rows,
        steps=steps, lr=lr, bn_weight=0.0 if no_bn_prior else bn_weight, seed=seed, device=device, batch_size=batch_size,
        tv_weight=tv_weight, jitter=jitter, flip=flip, overwrite=overwrite, silent=silent,
    )
    summary = json.loads((out / "inversion.json").read_text())
    console.print(
        f"wrote {len(summary['items'])} images to {out} (cosine to target: mean {summary['mean_cos']:.3f}, "
        f"min {summary['min_cos']:.3f}; {summary['seconds']:.1f} s)",
        soft_wrap=True,
    )


COMMANDS = [invert_cmd]
