"""Reading the JSON files of output directories: one clear line when one is missing or broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cleanface.errors import DataError


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a one-line :class:`DataError` naming the file otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); is this {what} complete?") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} should hold a JSON object, found {type(value).__name__}")
    return value
