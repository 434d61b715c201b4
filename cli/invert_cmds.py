"""``cleanface invert``: synthesise the faces a trained model sees in sub-centers or embeddings."""

from __future__ import annotations

import json

import click

from cleanface.inversion.identities import PRIOR_COMPONENTS, PRIOR_IMAGES, invert_identities
from cleanface.inversion.invert import DEFAULTS
from cleanface_cli._common import console, handle_errors, seed_option, silent_option


@click.command("invert")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--identity", "identities", multiple=True, help="Identity name of the run (repeat for several).")
@click.option("--all-identities", is_flag=True, help="Every identity of the run (for the purify report: one image per sub-center).")
@click.option("--sub-centers", is_flag=True, help="One image per sub-center (else one per identity: its dominant sub-center, or its centre).")
@click.option("--purify", "purify_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Purify output directory: marks the dominant sub-center and counts its votes.")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None, help="A .npy file of shape (N, D): invert its rows.")
@click.option("--rows", default=None, help="Rows of --embeddings to invert, e.g. 0,3,10-19 (default: all, at most 1000).")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Output folder for the PNGs and inversion.json.")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS["steps"], show_default=True, help="Optimisation steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS["lr"], show_default=True, help="Adam learning rate (cosine decay).")
@click.option("--bn-weight", type=click.FloatRange(min=0), default=None, show_default="0 with eigenfaces, else 0.002",
              help="Weight of the BatchNorm prior.")
@click.option("--no-bn-prior", is_flag=True, help="Turn the BatchNorm prior off (same as --bn-weight 0).")
@click.option("--bn-first", type=click.FloatRange(min=0), default=DEFAULTS["bn_first"], show_default=True,
              help="Multiplier of the first BatchNorm layer's term (colour and edge statistics).")
@click.option("--tv-weight", type=click.FloatRange(min=0), default=DEFAULTS["tv_weight"], show_default=True, help="Weight of the smoothness (total variation) prior.")
@click.option("--l2-weight", type=click.FloatRange(min=0), default=DEFAULTS["l2_weight"], show_default=True, help="Weight of the pixel-energy (L2) prior.")
@click.option("--prior-images", type=click.IntRange(min=0), default=PRIOR_IMAGES, show_default=True,
              help="Start from the average face of this many training images, drawn at random from the run's training data (or "
                   "--data), and keep near it: the image prior (0: start from noise, the data-free inversion).")
@click.option("--prior-components", type=click.IntRange(min=0), default=PRIOR_COMPONENTS, show_default=True,
              help="Eigenfaces of the image prior: the images are mixes of the ways training faces differ (0: a per-pixel prior).")
@click.option("--pixel-weight", type=click.FloatRange(min=0), default=None, show_default="1 with eigenfaces, 10 per pixel",
              help="Weight of the image prior's term (how near the average face the images stay).")
@click.option("--data", type=click.Path(exists=True), default=None, help="Dataset the image prior is drawn from [default: the run's training data].")
@click.option("--jitter", type=click.IntRange(min=0), default=DEFAULTS["jitter"], help="Largest random shift per step in pixels [default: image side // 32, at least 1].")
@click.option("--flip/--no-flip", default=DEFAULTS["flip"], show_default=True, help="Mirror the images at random during the optimisation.")
@click.option("--scale", type=click.FloatRange(0, 0.5, max_open=True), default=DEFAULTS["scale"], show_default=True,
              help="Largest random zoom per step (a factor in [1 - scale, 1 + scale]).")
@click.option("--levels", type=click.IntRange(min=1), default=DEFAULTS["levels"], show_default=True,
              help="Coarse-to-fine resolution levels (each doubles the side).")
@click.option("--restarts", type=click.IntRange(min=1), default=DEFAULTS["restarts"], show_default=True,
              help="Random starts per image; the best after a tenth of the steps is kept.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Targets optimised together (they share the BN statistics).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@seed_option
@silent_option
@handle_errors
def invert_cmd(
    run: str, identities: tuple[str, ...], all_identities: bool, sub_centers: bool, purify_dir: str | None, embeddings: str | None,
    rows: str | None, out_dir: str, steps: int, lr: float, bn_weight: float, no_bn_prior: bool, bn_first: float, tv_weight: float,
    l2_weight: float, prior_images: int, prior_components: int, pixel_weight: float | None, data: str | None, jitter: int | None, flip: bool, scale: float,
    levels: int, restarts: int, batch_size: int, device: str, overwrite: bool, seed: int, silent: bool,
) -> None:
    """Synthesise images whose embeddings under the model of RUN match its sub-centers or given embeddings.

    Starting from the average face of training images (--prior-images 0: from noise), the
    pixels are optimised so that the image's embedding points along the target while the
    image stays near the average face and the network's BatchNorm statistics near those of
    its training data. Writes
    OUT/<identity>/subcenter_<k>.png (or center.png), OUT/embeddings/row_<i>.png and
    OUT/inversion.json with the cosine reached by each image. Written to
    CLEAN/inversions with --all-identities --sub-centers --purify CLEAN, the images appear on
    the identity pages of CLEAN's report (cleanface report CLEAN).
    """
    if not identities and not all_identities and embeddings is None:
        raise click.UsageError("give at least one --identity, --all-identities or an --embeddings file")
    if identities and all_identities:
        raise click.UsageError("--identity and --all-identities exclude each other")
    if rows is not None and embeddings is None:
        raise click.UsageError("--rows needs --embeddings")
    if pixel_weight is not None and pixel_weight > 0 and not prior_images:
        raise click.UsageError("--pixel-weight needs --prior-images")
    out = invert_identities(
        run, list(identities), out_dir, sub_centers=sub_centers, purify_dir=purify_dir, embeddings=embeddings, rows=rows,
        all_identities=all_identities, prior_images=prior_images, prior_components=prior_components, data=data,
        steps=steps, lr=lr, bn_weight=0.0 if no_bn_prior else bn_weight, bn_first=bn_first, seed=seed, device=device, batch_size=batch_size,
        tv_weight=tv_weight, l2_weight=l2_weight, pixel_weight=pixel_weight,
        jitter=jitter, flip=flip, scale=scale, levels=levels, restarts=restarts, overwrite=overwrite, silent=silent,
    )
    summary = json.loads((out / "inversion.json").read_text())
    console.print(
        f"wrote {len(summary['items'])} images to {out} (cosine to target: mean {summary['mean_cos']:.3f}, "
        f"min {summary['min_cos']:.3f}; {summary['seconds']:.1f} s)",
        soft_wrap=True,
    )


COMMANDS = [invert_cmd]
