"""``cleanface embed`` (a run's backbone or an ONNX model) and ``cleanface export`` (a run's backbone to ONNX)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cleanface_cli._common import console, err_console, handle_errors, silent_option


def _numbers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected one number or three separated by commas, got {value!r}") from None


def _backbone(paths: tuple[str, ...], onnx: str | None, device: str, kw: dict[str, Any]) -> tuple[Any, str, int, int | None]:
    """The model to embed with, the dataset, the input size and crop: from a run (RUN DATA) or an ONNX model (--onnx MODEL DATA)."""
    if onnx is None:
        if len(paths) != 2:
            raise click.UsageError("give RUN and DATA (or --onnx MODEL.onnx and DATA)")
        if any(v is not None for v in kw.values()):
            raise click.UsageError("--input-size, --crop, --mean, --std and --bgr/--rgb go with --onnx only; a run records its own")
        from cleanface.inference.run import load_run

        loaded = load_run(paths[0], device=device)
        return loaded.backbone, paths[1], int(loaded.config["input_size"]), loaded.config.get("crop")
    if len(paths) != 1:
        raise click.UsageError("with --onnx give only DATA: the model replaces RUN")
    from cleanface.inference.onnx_embed import load_onnx

    model = load_onnx(onnx, device=device, **kw)
    return model, paths[0], model.preprocess.size, model.preprocess.crop


@click.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True), metavar="[RUN] DATA")
@click.option("--out", required=True, type=click.Path(), help="Folder for embeddings.npy and embeddings.json.")
@click.option("--onnx", type=click.Path(exists=True, dir_okay=False), default=None, help="Embed with this ONNX model (onnxruntime) instead of a run.")
@click.option("--input-size", type=click.IntRange(8, 1024), default=None, help="ONNX: input side [default: the model card's, else the model's input shape].")
@click.option("--crop", type=click.IntRange(1), default=None, help="ONNX: centre crop (source pixels) before resizing [default: the card's, else none].")
@click.option("--mean", callback=_numbers, default=None, help="ONNX: pixel mean, one value or three (0-255, model channel order) [default: card, else 127.5].")
@click.option("--std", callback=_numbers, default=None, help="ONNX: pixel std, one value or three [default: card, else 127.5].")
@click.option("--bgr/--rgb", default=None, help="ONNX: the model takes BGR (insightface zoo models may) [default: card, else RGB].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--no-flip", is_flag=True, help="Do not fuse the horizontally flipped image.")
@click.option("--device", default="cpu", show_default=True)
@silent_option
@handle_errors
def embed_cmd(paths: tuple[str, ...], out: str, onnx: str | None, input_size: int | None, crop: int | None, mean: list[float] | None,
              std: list[float] | None, bgr: bool | None, dtype: str, batch_size: int, no_flip: bool, device: str, silent: bool) -> None:
    """Embed every image of DATA with the model of RUN, or with an ONNX model (resumable; under torchrun each process embeds a shard)."""
    from cleanface.data.open import open_dataset
    from cleanface.inference.embed import embed_index, merge_shards

    backbone, data, size, crop = _backbone(paths, onnx, device, {"input_size": input_size, "crop": crop, "mean": mean, "std": std, "bgr": bgr})
    index = open_dataset(data)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    emb = embed_index(backbone, index, out, size=size, crop=crop, batch_size=batch_size,
                      dtype=dtype, flip=not no_flip, device=device, silent=silent, shard=world > 1)
    if world > 1:
        from cleanface.training.distributed import barrier, setup

        d = setup("cpu")  # gloo: the shards are files, the group only waits for them
        barrier(d)
        if not d.main:
            return
        emb = merge_shards(out, index, world, dtype=dtype)
    console.print(f"embedded {len(emb)} images ({emb.shape[1]}-d, {dtype}) into {Path(out) / 'embeddings.npy'}", soft_wrap=True)


@click.command("export")
@click.argument("run", type=click.Path(exists=True))
@click.option("--onnx", "out", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write (its model card goes beside it as .json).")
@click.option("--data", type=click.Path(exists=True), default=None, help="Check the export on images of this dataset [default: the run's dataset].")
@click.option("--opset", type=click.IntRange(18), default=None, help="ONNX opset [default: the exporter's].")
@click.option("--overwrite", is_flag=True, help="Replace OUT.onnx and its card if they exist.")
@handle_errors
def export_cmd(run: str, out: str, data: str | None, opset: int | None, overwrite: bool) -> None:
    """Export the backbone of RUN to ONNX (dynamic batch; input NCHW RGB in [-1, 1]; un-normalised embedding out)."""
    from cleanface.inference.onnx_embed import card_path
    from cleanface.inference.onnx_export import export_onnx

    card = export_onnx(run, out, data=data, opset=opset, overwrite=overwrite)
    check = card["export_check"]
    if check.get("warning"):
        err_console.print(f"[yellow]warning:[/] {check['warning']}", soft_wrap=True)
    where = f"images of {check['data']}" if check["source"] == "dataset" else "random images"
    console.print(f"exported {card['backbone']} ({card['input']['size']}x{card['input']['size']} -> {card['embedding_size']}-d, opset {card['opset']}) "
                  f"to {out}, card {card_path(out)}", soft_wrap=True)
    console.print(f"check against PyTorch on {check['images']} {where} (batch 1 and {check['images']}): "
                  f"max abs diff {check['max_abs_diff']:.3g} ({check['max_rel_diff']:.1e} of the largest output), min cosine {check['min_cosine']:.6f} (1 - {max(0.0, 1 - check['min_cosine']):.1e})", soft_wrap=True)


COMMANDS = [embed_cmd, export_cmd]
