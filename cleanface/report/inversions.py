"""Synthesised sub-center faces on the identity pages of a purify report (opt-in).

``cleanface invert RUN --all-identities --sub-centers --purify CLEAN --out CLEAN/inversions``
(or ``cleanface purify ... --invert-subcenters``) writes one image per sub-center in the
layout of :mod:`cleanface.inversion.identities`. When such a folder is given to the report
(or sits at ``CLEAN/inversions``), each sub-center section of an identity page shows the
face the model sees in that sub-center, with the cosine the image reached; the images are
copied into ``report/inversions/``. Only the files named in ``inversion.json`` are read.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanface._atomic import is_complete
from cleanface.errors import DataError

#: the folder of a purify output directory looked at when no inversion folder is given
DEFAULT_FOLDER = "inversions"


@dataclass(frozen=True)
class SubcenterImage:
    """The synthesised image of one sub-center of one identity."""

    source: Path
    file: str
    cos: float | None
    dominant: bool | None


def read_inversions(folder: str | os.PathLike) -> dict[tuple[str, int], SubcenterImage]:
    """``(identity name, sub-center) -> SubcenterImage`` of a finished inversion folder.

    Raises :class:`DataError` (naming the folder) when it is unfinished, lacks or holds a
    malformed ``inversion.json``, or names a file that is not there or lies outside it.
    """
    folder = Path(folder)
    manifest = folder / "inversion.json"
    if not manifest.is_file():
        raise DataError(f"{folder} holds no inversion.json: write it with cleanface invert RUN --sub-centers --out {folder}")
    if not is_complete(folder):
        raise DataError(f"{folder} is an unfinished inversion (no COMPLETE marker); run cleanface invert again")
    try:
        items = json.loads(manifest.read_text(encoding="utf-8"))["items"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest} is not a cleanface inversion manifest ({exc})") from exc
    found: dict[tuple[str, int], SubcenterImage] = {}
    root = folder.resolve()
    for item in items:
        if not isinstance(item, dict) or item.get("target") != "subcenter" or item.get("identity") is None:
            continue
        source = (folder / str(item["file"])).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            raise DataError(f"{manifest} names {item['file']!r}, which is not a file inside {folder}")
        cos = item.get("cos")
        found[(str(item["identity"]), int(item["subcenter"]))] = SubcenterImage(
            source, str(item["file"]), None if cos is None else float(cos), item.get("dominant"))
    return found


def find_inversions(clean_dir: Path, given: str | os.PathLike | None) -> dict[tuple[str, int], SubcenterImage]:
    """The inversions to show: those of ``given``, else of ``clean_dir/inversions`` when that folder is finished, else none."""
    if given is not None:
        return read_inversions(given)
    default = clean_dir / DEFAULT_FOLDER
    if (default / "inversion.json").is_file() and is_complete(default):
        return read_inversions(default)
    return {}


def place(image: SubcenterImage, stage: Path) -> dict[str, Any]:
    """Copy ``image`` into the report being built at ``stage``; what an identity page's section shows of it."""
    target = stage / DEFAULT_FOLDER / image.file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.source, target)
    return {"src": f"{DEFAULT_FOLDER}/{image.file}", "cos": image.cos}
