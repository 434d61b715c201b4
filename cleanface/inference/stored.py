"""Reading embeddings that :func:`cleanface.inference.embed.embed_index` wrote, without torch.

An embeddings file is ``embeddings.npy`` (N, D), memory-mappable, with ``embeddings.json``
beside it (fingerprint of the dataset it embeds, count, dtype, model stamp); a file written
for another dataset is refused with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError


def read_embeddings_file(path: str | os.PathLike, index: DatasetIndex) -> np.ndarray:
    """Embeddings written by ``embed_index`` (a directory or its ``embeddings.npy``), memory-mapped.

    The ``embeddings.json`` beside it must carry the fingerprint of ``index`` and its count.
    """
    path = Path(path)
    npy = path / "embeddings.npy" if path.is_dir() else path
    meta_path = npy.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path} beside the embeddings {npy}: {exc}") from None
    fingerprint = meta.get("fingerprint", meta.get("index_fingerprint"))
    if fingerprint != index.fingerprint():
        raise DataError(f"embeddings {npy} were computed for another dataset (fingerprint {fingerprint}, this dataset {index.fingerprint()}); embed this dataset again")
    try:
        emb = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read embeddings {npy}: {exc}") from None
    if emb.ndim != 2 or len(emb) != len(index):
        raise DataError(f"embeddings {npy} have shape {emb.shape} but the dataset has {len(index)} images")
    return emb
