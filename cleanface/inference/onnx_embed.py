"""Embedding with an ONNX model through onnxruntime (the optional ``onnx`` extra).

:func:`load_onnx` opens a model and returns an :class:`OnnxBackbone`: an ``nn.Module`` that
behaves like a cleanface backbone for :func:`cleanface.inference.embed.embed_index` (float
batches (B, 3, H, W) in [-1, 1] in, (B, D) float32 embeddings out), so ONNX embeddings are
flip-fused, L2-normalised, chunked and resumable exactly as those of a trained run.

Preprocessing (input size, crop, normalisation, channel order) is read, in this order of
preference, from options given explicitly, the model card ``MODEL.json`` beside the model
(written by :func:`cleanface.inference.onnx_export.export_onnx`), the ``cleanface``
metadata of the model itself, and the model's input shape; normalisation defaults to
``(x - 127.5) / 127.5`` RGB, which is both cleanface's and insightface's.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from cleanface._atomic import file_sha256
from cleanface.errors import ConfigError, DataError

INSTALL_HINT = "pip install 'cleanface[onnx]'"
CARD_FORMAT = "cleanface-onnx-model-card/1"
META_KEY = "cleanface"  # metadata_props entry of an exported model: its preprocessing as JSON
PIXEL_MEAN = 127.5  # cleanface's (x/255 - 0.5)/0.5 is (x - 127.5)/127.5
PIXEL_STD = 127.5
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def require(*names: str, what: str = "ONNX support") -> list[ModuleType]:
    """Import the optional packages ``names``; one line naming the install command when one is missing."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ConfigError(f"{what} needs the optional package {name}, which is not installed: {INSTALL_HINT}") from None
    return modules


def card_path(model: str | os.PathLike) -> Path:
    """The model card beside ``MODEL.onnx``: ``MODEL.json``."""
    return Path(model).with_suffix(".json")


def read_card(model: str | os.PathLike, sha256: str) -> dict | None:
    """The cleanface model card beside ``model``, or None; a card written for another file is refused."""
    path = card_path(model)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the model card {path}: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        return None  # some other JSON file: not ours to read
    if card.get("sha256") not in (None, sha256):
        raise ConfigError(f"the model card {path} describes another model than {model} (its sha256 differs); export again or remove the card")
    return card


@dataclass(frozen=True)
class Preprocess:
    """How decoded RGB uint8 images become the model's input: ``(x - mean) / std`` per channel, in the model's channel order."""

    size: int
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool
    source: str  # where the size came from: option, card, metadata or shape

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "crop": self.crop, "mean": list(self.mean), "std": list(self.std), "channels": "BGR" if self.bgr else "RGB"}


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or any(not np.isfinite(v) for v in values):
        raise ConfigError(f"{what} must be one number or three (one per channel), got {value!r}")
    return values[0], values[1], values[2]


def _shape_size(shape: list[Any]) -> int | None:
    """The side of a fixed square NCHW input shape, None when it is dynamic."""
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0:
        if h != w:
            raise ConfigError(f"the model takes {h}x{w} inputs; cleanface embeds square face crops only")
        return h
    return None


def resolve_preprocess(shape: list[Any], card: dict | None, meta: dict | None, given: dict[str, Any]) -> Preprocess:
    """The preprocessing of a model from options ``given`` (None: not given), its card, its metadata and its input shape."""
    found = (card or {}).get("input") or meta or {}
    fixed = _shape_size(shape)
    size, source = given.get("input_size"), "option"
    if size is None:
        size, source = (found.get("size"), "card" if card else "metadata") if found.get("size") else (fixed, "shape")
    if size is None:
        raise ConfigError("the model's input size is dynamic and it has no model card: give --input-size")
    size = int(size)
    if fixed is not None and fixed != size:
        raise ConfigError(f"the model takes {fixed}x{fixed} inputs, not {size}x{size}")
    crop = given.get("crop") if given.get("crop") is not None else found.get("crop")
    mean = _triple(given.get("mean") if given.get("mean") is not None else found.get("mean", PIXEL_MEAN), "the mean")
    std = _triple(given.get("std") if given.get("std") is not None else found.get("std", PIXEL_STD), "the std")
    if any(s == 0 for s in std):
        raise ConfigError("the std must not be zero")
    bgr = bool(given["bgr"]) if given.get("bgr") is not None else found.get("channels", "RGB") == "BGR"
    return Preprocess(size, int(crop) if crop is not None else None, mean, std, bgr, source)


class OnnxBackbone(nn.Module):
    """An onnxruntime session dressed as a backbone: ``forward(x (B, 3, S, S) in [-1, 1]) -> (B, D) float32``."""

    def __init__(self, session: Any, path: Path, sha256: str, preprocess: Preprocess, card: dict | None) -> None:
        super().__init__()
        self.session, self.path, self.sha256, self.preprocess, self.card = session, path, sha256, preprocess, card
        first = session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = _DTYPES.get(first.type, np.float32)
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else None
        # x in [-1, 1] is u / 127.5 - 1 for pixel u; the model wants (u - mean) / std = x * a + b
        mean, std = np.array(preprocess.mean), np.array(preprocess.std)
        self._scale = (PIXEL_STD / std).astype(np.float32).reshape(1, 3, 1, 1)
        self._shift = ((PIXEL_MEAN - mean) / std).astype(np.float32).reshape(1, 3, 1, 1)
        self._identity = bool(np.all(self._scale == 1) and np.all(self._shift == 0))

    def weights_stamp(self) -> str:
        """Which model embeddings on disk came from: a hash of the ``.onnx`` file."""
        return self.sha256[:16]

    def _prepare(self, x: torch.Tensor) -> np.ndarray:
        arr = x.detach().float().cpu().numpy()
        if self.preprocess.bgr:
            arr = arr[:, ::-1]
        if not self._identity:
            arr = arr * self._scale + self._shift
        return np.ascontiguousarray(arr, dtype=self.input_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = self._prepare(x)
        step = self.fixed_batch or max(1, len(arr))
        parts = []
        for start in range(0, len(arr), step):
            piece = arr[start : start + step]
            if len(piece) < step:  # a model with a fixed batch size: pad the last piece
                piece = np.concatenate([piece, np.zeros((step - len(piece), *piece.shape[1:]), dtype=piece.dtype)])
            out = np.asarray(self.session.run(None, {self.input_name: piece})[0], dtype=np.float32)
            parts.append(out.reshape(len(out), -1)[: min(step, len(arr) - start)])
        emb = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        return torch.from_numpy(emb).to(x.device)


def open_session(model: str | bytes | os.PathLike, device: str = "cpu", *, where: str | None = None) -> Any:
    """An onnxruntime session of a model file (or its bytes); one line when it cannot be read as a model."""
    (ort,) = require("onnxruntime")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"this onnxruntime has no CUDA provider (device {device!r}): install onnxruntime-gpu, or use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types for unreadable models)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where or model} is not a readable ONNX model ({detail})") from None


def _model_metadata(session: Any) -> dict | None:
    try:
        raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
        meta = json.loads(raw) if raw else None
    except (AttributeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def load_onnx(path: str | os.PathLike, *, device: str = "cpu", input_size: int | None = None, crop: int | None = None,
              mean: Any = None, std: Any = None, bgr: bool | None = None) -> OnnxBackbone:
    """Open ``path`` (a ``.onnx`` file) as a backbone for :func:`~cleanface.inference.embed.embed_index`.

    Options left None come from the model card beside the model, the model's metadata or
    its input shape (see the module docstring). ``mean``/``std``: one value or three, in
    pixel units (0-255) and in the model's channel order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX model {path} not found")
    require("onnxruntime", what="embed --onnx")
    sha = file_sha256(path)
    card = read_card(path, sha)
    session = open_session(path, device)
    first = session.get_inputs()[0]
    shape = list(first.shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise DataError(f"{path}: expected an image input of shape (B, 3, H, W), the model's input {first.name!r} has shape {shape}")
    given = {"input_size": input_size, "crop": crop, "mean": mean, "std": std, "bgr": bgr}
    preprocess = resolve_preprocess(shape, card, _model_metadata(session), given)
    return OnnxBackbone(session, path, sha, preprocess, card)
