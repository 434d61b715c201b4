"""Checkpoints are data, not code: written atomically, read with ``weights_only=True``.

A training checkpoint holds the model and optimiser state, the step, and every random
number generator state, so that a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleanface._atomic import atomic_write_bytes
from cleanface.inference.weights import load

__all__ = ["BackgroundWriter", "load", "rng_state", "save", "serialize", "set_rng_state"]


def save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` into memory, then an atomic write: a crash never leaves half a file."""
    atomic_write_bytes(path, serialize(obj))


def serialize(obj: dict[str, Any]) -> bytes:
    """The bytes :func:`save` writes: a snapshot, unaffected by later changes to the tensors."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class BackgroundWriter:
    """Writes serialized checkpoints atomically in a background thread, one at a time.

    The state is serialized by the caller (a consistent snapshot, taken between two
    optimiser steps); writing and fsyncing it, the part that waits on the disk, overlaps
    with training. :meth:`wait` joins the pending write and re-raises its error (ENOSPC
    included), so a failed write stops the run at the next checkpoint or at the end, and
    the previous checkpoint stays intact as with :func:`save`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, obj: dict[str, Any], path: str | os.PathLike) -> None:
        data = serialize(obj)
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(Path(path), data), name="cleanface-checkpoint")
        self._thread.start()

    def _write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write_bytes(path, data)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def rng_state() -> dict[str, Any]:
    """The state of every generator a training step may draw from (torch, CUDA, numpy, random)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
