"""What a training run writes beside its checkpoints; reading a finished run back is :mod:`cleanface.inference.run`."""

from __future__ import annotations

from pathlib import Path

from cleanface._atomic import atomic_write_bytes
from cleanface.inference.run import NAMES


def write_names(run_dir: Path, names: list[str]) -> None:
    """``identities.txt``: one name per line in label order (undecodable bytes kept via surrogateescape)."""
    atomic_write_bytes(run_dir / NAMES, "".join(f"{n}\n" for n in names).encode("utf-8", "surrogateescape"))
