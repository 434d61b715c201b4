"""Starting a training from pretrained weights (``--init PATH``).

``PATH`` may be

* a plain state dict of a backbone (``.pth`` / ``.pt``), as insightface ``arcface_torch`` writes
  ``backbone.pth`` (``torch.save`` of an ``OrderedDict`` of tensors; cleanface's iResNets use
  the published parameter names and shapes), with or without a ``module.`` (DDP), ``backbone.``
  or ``_orig_mod.`` (``torch.compile``) prefix; an arcface_torch resume checkpoint
  (``state_dict_backbone``) works too;
* a cleanface ``model.pt`` (``{"backbone", "head", "config", "names"}``) or training checkpoint;
* a cleanface run directory (its ``model.pt``).

The file is read with :func:`cleanface.inference.weights.load` (tensors and plain containers
only: pickled code is refused) and checked against the configured backbone key by key; the
first missing, unexpected or differently shaped entry is one :class:`CheckpointError` line.

The new head is then set from the embeddings of the training images under the initial
backbone (:func:`init_head`): each identity's K sub-centers start at the normalised mean of
its images' embeddings (eval mode, flip-fused) plus small seeded perturbations (K=1: the
normalised mean itself), as unit rows. Unit rows move more slowly under SGD than the small
random ones (norm about 0.01 sqrt(D)) they replace, which keeps a good start from being
scattered by the first steps; on synthetic faces this fine-tuned to a lower loss than the same
means at the random rows' norm (``benchmarks/init_finetune.py``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cleanface._atomic import file_sha256
from cleanface.errors import CheckpointError
from cleanface.inference.embed import embed_arrays
from cleanface.inference.run import LAST, MODEL
from cleanface.inference.weights import load
from cleanface.progress import make_progress

#: Prefixes a saved backbone's keys may carry: DDP, a model holding the backbone, torch.compile.
PREFIXES = ("module.", "backbone.", "_orig_mod.")
#: Entries that hold a backbone's state dict inside a larger checkpoint, in order of preference.
CONTAINERS = ("backbone", "state_dict_backbone", "state_dict", "model")
#: Norm of each sub-center's random perturbation relative to the unit class mean (cosine about 0.995).
SUBCENTER_JITTER = 0.1
#: Classes per block of perturbations: a block's draws depend on (seed, block) only, so every
#: number of processes gives each class the same perturbations.
JITTER_BLOCK = 1024
#: Training images embedded at once by :func:`init_head`.
CHUNK = 2048
_IRESNET_DEPTHS = {(2, 2, 2, 2): "iresnet18", (3, 4, 6, 3): "iresnet34", (3, 4, 14, 3): "iresnet50", (3, 13, 30, 3): "iresnet100"}


@dataclass
class InitWeights:
    """A backbone state dict read for ``--init``, and where it came from."""

    path: str
    file: Path
    kind: str
    state: dict[str, torch.Tensor]
    prefix: str = ""
    config: dict[str, Any] | None = None
    sha256: str = field(default="", repr=False)

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps of it (``init_source``)."""
        return {"path": self.path, "file": str(self.file.resolve()), "kind": self.kind, "prefix": self.prefix, "sha256": self.sha256, "entries": len(self.state)}


def init_file(path: str | os.PathLike) -> Path:
    """The weight file ``--init PATH`` names: the file itself, or a run directory's ``model.pt``."""
    p = Path(path)
    if p.is_dir():
        if (p / MODEL).is_file():
            return p / MODEL
        if (p / "config.json").is_file():
            hint = f"pass {p / LAST} to start from its last checkpoint" if (p / LAST).is_file() else "train it first"
            raise CheckpointError(f"--init {path}: the run is not finished (no {MODEL}); {hint}")
        raise CheckpointError(f"--init {path} is a directory but not a cleanface run (no {MODEL})")
    if not p.is_file():
        raise CheckpointError(f"--init {path} does not exist")
    return p


def read_init(path: str | os.PathLike) -> InitWeights:
    """Read the backbone weights ``--init PATH`` names (see the module docstring); checks nothing against a model yet."""
    file = init_file(path)
    obj = load(file, map_location="cpu")
    kind, config = "state dict", None
    for key in CONTAINERS:
        if isinstance(obj.get(key), dict):
            if key == "backbone":
                kind = "cleanface model" if "names" in obj else "cleanface checkpoint"
                config = obj.get("config") if isinstance(obj.get("config"), dict) else None
            else:
                kind = f"{key} of a checkpoint"
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        listed = ", ".join(sorted(map(str, obj))[:6])
        raise CheckpointError(f"--init {path} holds no backbone weights (no tensors; entries: {listed or 'none'})")
    state, prefix = strip_prefixes(tensors)
    return InitWeights(str(path), file, kind, state, prefix, config, file_sha256(file)[:16])


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the :data:`PREFIXES` the keys carry; a model's ``backbone.`` entries are kept alone.

    Returns the renamed state and the prefixes removed (``""`` when none).
    """
    removed = ""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                removed, changed = removed + prefix, True
            elif prefix == "backbone." and any(k.startswith(prefix) for k in state):  # a whole model: its backbone part
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                removed, changed = removed + prefix, True
    return state, removed


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_fits(weights: InitWeights, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """The state ``model`` loads from ``weights``, or one :class:`CheckpointError` naming the first mismatch.

    ``what`` describes the model (``iresnet50 (512-d, 112x112)``). A missing BatchNorm
    ``num_batches_tracked`` counter (older exports) is taken from the model.
    """
    expected = model.state_dict()
    state = weights.state
    problems: list[str] = []
    for key, tensor in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"{key} {_shape(tensor)} is missing from the file")
        elif state[key].shape != tensor.shape:
            problems.append(f"{key} is {_shape(state[key])} in the file, {_shape(tensor)} in the model")
    problems += [f"the file has {key} {_shape(state[key])}, which the model lacks" for key in state if key not in expected]
    if problems:
        more = f" ({len(problems)} entries differ in all)" if len(problems) > 1 else ""
        raise CheckpointError(f"{weights.path} does not fit {what}: {problems[0]}{more}{_hint(weights, what)}")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{weights.path}: {bad} holds non-finite values (NaN or inf); these weights cannot start a training")
    return {key: state.get(key, tensor) for key, tensor in expected.items()}


def describe(name: str, embedding_size: int, input_size: int) -> str:
    """``iresnet50 (512-d, 112x112)``."""
    return f"{name} ({embedding_size}-d, {input_size}x{input_size})"


def _hint(weights: InitWeights, what: str) -> str:
    """What the file holds, when it can be told and differs from the model: the settings that would fit it."""
    c = weights.config
    if c and {"backbone", "embedding_size", "input_size"} <= set(c):
        found, flags = describe(c["backbone"], c["embedding_size"], c["input_size"]), f"--backbone {c['backbone']} --embedding-size {c['embedding_size']} --input-size {c['input_size']}"
        return "" if found == what else f"; the file is a cleanface {found} model: train with {flags}"
    guess = guess_iresnet(weights.state)
    return "" if guess is None or guess == what else f"; the file looks like {guess}"


def guess_iresnet(state: dict[str, torch.Tensor]) -> str | None:
    """``iresnet50 (512-d, 112x112)`` for a state dict in the arcface_torch iResNet layout, else None."""
    fc = state.get("fc.weight")
    blocks = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1)) - 1] = max(blocks[int(m.group(1)) - 1], int(m.group(2)) + 1)
    name = _IRESNET_DEPTHS.get(tuple(blocks))
    if name is None or fc is None or fc.dim() != 2:
        return None
    side = math.isqrt(int(fc.shape[1]) // 512)
    if side * side * 512 != int(fc.shape[1]):
        return None
    return describe(name, int(fc.shape[0]), 16 * side)


def load_backbone(model: nn.Module, weights: InitWeights, what: str) -> None:
    """Copy ``weights`` into ``model`` (in place, so optimisers and DDP keep their references), checked first."""
    state = check_fits(weights, model, what)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def read_images(index: Any, ids: np.ndarray, *, cache: Any, size: int, crop: int | None) -> np.ndarray:
    """uint8 images (n, S, S, 3) of samples ``ids``: from the decode cache, or decoded here."""
    if cache is not None:
        return np.asarray(cache.images[ids])
    from cleanface.data.images import decode_image

    out = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(ids.tolist()):
        out[j] = decode_image(index.read_bytes(i), size=size, crop=crop, where=index.location(i))
    return out


def class_means(
    backbone: nn.Module, images: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, labels: np.ndarray, *,
    class_start: int, num_classes: int, device: Any, batch_size: int = 256, amp_dtype: torch.dtype | None = None, silent: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean embedding (C', D) float32 of classes ``[class_start, class_start + C')`` and their image counts (C',).

    Every sample of ``samples`` whose label falls in the range is embedded once (eval mode,
    flip-fused, in chunks of :data:`CHUNK`); the sums stream, so memory is O(C' D).
    """
    local = labels[samples].astype(np.int64) - class_start
    owned = (local >= 0) & (local < num_classes)
    ids, local = samples[owned], local[owned]
    order = np.argsort(ids, kind="stable")  # contiguous reads of the cache
    ids, local = ids[order], local[order]
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.int64)
    dev_type = torch.device(device).type
    with make_progress(silent=silent) as bar:
        task = bar.add_task("embed for the head init", total=len(ids))
        for start in range(0, len(ids), CHUNK):
            chunk, where = ids[start:start + CHUNK], torch.from_numpy(local[start:start + CHUNK])
            with torch.autocast(dev_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                emb = torch.from_numpy(embed_arrays(backbone, images(chunk), batch_size=batch_size, flip=True, device=device))
            if sums is None:
                sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float32)
            sums.index_add_(0, where, emb.float())
            counts += torch.bincount(where, minlength=num_classes)
            bar.update(task, advance=len(chunk))
    if sums is None:
        return torch.zeros(num_classes, 0), counts
    return F.normalize(sums, dim=1), counts


def jitter(seed: int, class_start: int, num_classes: int, k: int, dim: int) -> torch.Tensor:
    """Perturbations (C', K, D) of norm about :data:`SUBCENTER_JITTER` for classes ``[class_start, class_start + C')``.

    Drawn per block of :data:`JITTER_BLOCK` classes from ``(seed, block)``: the same for a
    class whatever the number of processes the classes are sharded over.
    """
    end = class_start + num_classes
    parts = []
    for block in range(class_start // JITTER_BLOCK, (end - 1) // JITTER_BLOCK + 1):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + block + 1)
        parts.append(torch.randn(JITTER_BLOCK, k, dim, generator=g))
    noise = torch.cat(parts)
    offset = class_start - (class_start // JITTER_BLOCK) * JITTER_BLOCK
    return noise[offset:offset + num_classes] * (SUBCENTER_JITTER / math.sqrt(dim))


@torch.no_grad()
def set_subcenters(weight: torch.Tensor, means: torch.Tensor, counts: torch.Tensor, *, k: int, seed: int, class_start: int) -> int:
    """Set the rows (C' K, D) of ``weight`` of every class with images to its unit mean (+ jitter when K > 1), in place.

    Classes without images keep their random rows. Returns the number of classes set.
    """
    num, dim = counts.shape[0], weight.shape[1]
    has = counts > 0
    if not bool(has.any()):
        return 0
    w = weight.view(num, k, dim)
    target = means.to(torch.float32).unsqueeze(1).expand(num, k, dim)
    if k > 1:
        target = target + jitter(seed, class_start, num, k, dim)
    target = F.normalize(target, dim=2).to(w.device, w.dtype)
    rows = torch.nonzero(has.to(w.device)).squeeze(1)
    w[rows] = target[rows]
    return int(has.sum())


def init_head(head: nn.Module, backbone: nn.Module, images: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, labels: np.ndarray, *,
              class_start: int = 0, seed: int = 0, device: Any = "cpu", batch_size: int = 256, amp_dtype: torch.dtype | None = None,
              silent: bool = True) -> dict[str, Any]:
    """Set the sub-centers of ``head`` (a single-process head, or one rank's shard starting at ``class_start``) from ``backbone``.

    Returns ``{"method", "classes", "classes_set", "images"}`` for the run's record.
    """
    means, counts = class_means(backbone, images, samples, labels, class_start=class_start, num_classes=head.num_classes, device=device,
                                batch_size=batch_size, amp_dtype=amp_dtype, silent=silent)
    if means.shape[1] not in (0, head.embedding_size):
        raise CheckpointError(f"the initial backbone gives {means.shape[1]}-d embeddings, the head expects {head.embedding_size}")
    done = set_subcenters(head.weight.data, means, counts, k=head.k, seed=seed, class_start=class_start) if means.shape[1] else 0
    method = "class mean" if head.k == 1 else f"class mean + {SUBCENTER_JITTER:g} jitter"
    return {"method": method, "classes": int(head.num_classes), "classes_set": done, "images": int(counts.sum())}
