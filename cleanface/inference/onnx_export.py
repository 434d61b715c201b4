"""Exporting the backbone of a cleanface run to ONNX, checked against PyTorch, with a model card.

:func:`export_onnx` writes ``OUT.onnx`` (input ``input`` float32 (B, 3, S, S) in [-1, 1], RGB,
NCHW, dynamic batch; output ``embedding`` (B, D), not normalised) and the model card
``OUT.json`` beside it. The exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export +
onnxscript): the TorchScript exporter (``dynamo=False``) is deprecated and due for removal.
Before anything is written, the exported graph is run in onnxruntime on real images of the
run's dataset (or of ``data``), at batch 1 and at a larger batch, and compared with the
PyTorch backbone; a model that disagrees is not written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from cleanface._atomic import atomic_write_bytes, atomic_write_json
from cleanface.data.images import decode_image, to_tensor_batch
from cleanface.errors import CheckpointError, ConfigError, DataError
from cleanface.inference.onnx_embed import CARD_FORMAT, META_KEY, PIXEL_MEAN, PIXEL_STD, card_path, open_session, require
from cleanface.inference.run import load_run

CHECK_IMAGES = 16
MIN_COSINE = 0.999  # below this the exported graph does not compute the same model: nothing is written
EXPORTER = "torch.onnx.export(dynamo=True)"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and log lines (missing torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_bytes(backbone: nn.Module, size: int, *, opset: int | None = None, metadata: dict | None = None) -> tuple[bytes, int]:
    """The serialised ONNX graph of ``backbone`` at input ``size`` with a dynamic batch axis, and its opset."""
    (onnx,) = require("onnx", what="ONNX export")
    require("onnxscript", what="ONNX export")
    backbone = backbone.eval()
    example = torch.zeros(2, 3, size, size)  # batch 2: torch.export specialises a batch of 1
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(backbone, (example,), dynamo=True, verbose=False, input_names=["input"], output_names=["embedding"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, external_data=False)
            proto = program.model_proto
    except Exception as exc:  # noqa: BLE001  (torch.export and onnxscript raise many types)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the {type(backbone).__name__} backbone could not be exported to ONNX ({detail})") from None
    if metadata:
        onnx.helper.set_model_props(proto, {META_KEY: json.dumps(metadata, sort_keys=True)})
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return proto.SerializeToString(), int(versions[0]) if versions else -1


def _dataset_images(data: str, size: int, crop: int | None, count: int) -> np.ndarray:
    """Up to ``count`` decoded images spread over the dataset at ``data``: uint8 (n, S, S, 3)."""
    from cleanface.data.open import open_dataset

    index = open_dataset(data, silent=True)
    picks = np.unique(np.linspace(0, len(index) - 1, num=min(count, len(index))).astype(np.int64)) if len(index) else []
    images = []
    for i in picks:
        try:
            images.append(decode_image(index.read_bytes(int(i)), size=size, crop=crop, where=index.location(int(i))))
        except (DataError, OSError, ValueError):
            continue
    if not images:
        raise DataError(f"no image of {data} could be decoded")
    return np.stack(images)


def check_images(config: dict, data: str | os.PathLike | None, *, count: int = CHECK_IMAGES, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Images to check an export on: of ``data`` if given, else of the run's dataset, else seeded noise (with a warning)."""
    size, crop = int(config["input_size"]), config.get("crop")
    if data is not None:
        return _dataset_images(str(data), size, crop, count), {"source": "dataset", "data": str(data), "warning": None}
    recorded = config.get("data")
    if recorded:
        try:
            return _dataset_images(str(recorded), size, crop, count), {"source": "dataset", "data": str(recorded), "warning": None}
        except (DataError, OSError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warning = f"the run's dataset {recorded} could not be read ({why}); checked on random images instead (give --data to check on faces)"
    else:
        warning = "the run records no dataset; checked on random images instead (give --data to check on faces)"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8), {"source": "random", "data": None, "warning": warning}


@torch.no_grad()
def compare(backbone: nn.Module, session: Any, images: np.ndarray) -> dict[str, Any]:
    """Max abs difference (also relative to the largest output value) and min cosine between PyTorch and onnxruntime
    outputs, at batch 1 and at batch ``len(images)``."""
    x = to_tensor_batch(images)
    name = session.get_inputs()[0].name
    diffs, scales, cosines = [], [], []
    for batch in (x[:1], x):
        ref = backbone.eval()(batch).float().numpy().astype(np.float64)
        got = np.asarray(session.run(None, {name: batch.numpy()})[0], dtype=np.float64)
        if got.shape != ref.shape:
            raise CheckpointError(f"the exported model gives outputs of shape {got.shape} for a batch of {len(batch)}, PyTorch {ref.shape}")
        diffs.append(float(np.abs(got - ref).max()))
        scales.append(float(np.abs(ref).max()))
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
        cosines.append(float(np.min(np.sum(got * ref, axis=1) / np.maximum(norms, 1e-30))))
    return {"images": int(len(images)), "batch_sizes": [1, int(len(images))], "max_abs_diff": max(diffs),
            "max_rel_diff": max(diffs) / max(max(scales), 1e-30), "min_cosine": min(cosines)}


def _verification(run: Path) -> dict | None:
    """The run's verification results (``eval.json``) without the ROC curve, or None."""
    try:
        result = json.loads((run / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in result.items() if k != "roc"} if isinstance(result, dict) else None


def build_card(run: Path, config: dict, names: list[str], check: dict, opset: int, model: Path, data: bytes) -> dict[str, Any]:
    """The model card written beside ``OUT.onnx``."""
    from cleanface import __version__

    size, dim = int(config["input_size"]), int(config["embedding_size"])
    return {
        "format": CARD_FORMAT, "model": model.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        "input": {"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                  "size": size, "crop": config.get("crop"), "normalisation": "(x/255 - 0.5) / 0.5", "mean": PIXEL_MEAN, "std": PIXEL_STD,
                  "range": [-1.0, 1.0]},
        "output": {"name": "embedding", "shape": ["batch", dim], "normalised": False},
        "embedding_size": dim, "backbone": config.get("backbone"), "head": config.get("head"), "num_identities": len(names),
        "training_data": {"path": config.get("data"), "fingerprint": config.get("data_fingerprint")},
        "run": str(run), "verification": _verification(run), "export_check": check,
        "cleanface_version": __version__, "torch_version": torch.__version__, "exporter": EXPORTER, "opset": opset,
    }


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike, *, data: str | os.PathLike | None = None, opset: int | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Export the backbone of the run at ``run_dir`` to ``out`` (``.onnx``) and its card ``out`` with ``.json``; return the card.

    Raises
    ------
    ConfigError
        ``out`` does not end in ``.onnx``, exists (without ``overwrite``), or the onnx extra is missing.
    CheckpointError
        The run cannot be loaded or exported, or the exported graph disagrees with PyTorch.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"the ONNX output must end in .onnx (its model card goes beside it as .json), got {out}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; give --overwrite to replace it")
    require("onnx", "onnxscript", "onnxruntime", what="ONNX export")
    loaded = load_run(run_dir, device="cpu")
    config, size = loaded.config, int(loaded.config["input_size"])
    preprocess = {"size": size, "crop": config.get("crop"), "mean": PIXEL_MEAN, "std": PIXEL_STD, "channels": "RGB"}
    blob, used_opset = export_bytes(loaded.backbone, size, opset=opset, metadata=preprocess)
    images, source = check_images(config, data)
    check = {**compare(loaded.backbone, open_session(blob, where=f"the exported {out.name}"), images), **source}
    if not check["min_cosine"] >= MIN_COSINE:
        raise CheckpointError(f"the exported model disagrees with PyTorch (min cosine {check['min_cosine']:.6f}, max abs diff "
                              f"{check['max_abs_diff']:.3g} on {check['images']} images); {out} was not written")
    run = Path(run_dir).parent if Path(run_dir).is_file() else Path(run_dir)
    card = build_card(run, config, loaded.names, check, used_opset, out, blob)
    atomic_write_bytes(out, blob)
    atomic_write_json(card_path(out), card)
    return card

