"""Reading weight files safely: tensors and plain containers only, every entry's CRC-32 checked.

Training writes checkpoints and ``model.pt`` (:mod:`cleanface.training.checkpoint`);
everything that reads them back (loading a run, resuming a training) goes through
:func:`load`, so that a file carrying pickled code or a flipped bit is refused with one line.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cleanface.errors import CheckpointError


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; anything but tensors and plain containers is refused.

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupted files (the CRC-32 of every entry is checked),
        and files carrying pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_crc(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} was refused: it is not plain weights data ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of states")
    return obj


def _check_crc(path: Path) -> None:
    """Refuse a checkpoint whose stored CRC-32s disagree with its bytes.

    ``torch.load`` does not verify them, so a flipped bit inside a tensor would load as
    silently wrong weights; the zip container torch writes carries a CRC-32 per entry.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return  # not a zip (a legacy or foreign file): torch.load decides
    except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__}: {str(exc)[:160]})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupted: the data of {bad!r} does not match its checksum")
