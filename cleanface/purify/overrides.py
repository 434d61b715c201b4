"""A reviewer's overrides of purify's decisions: ``overrides.json`` read and checked for shape.

The file is what the review page exports (docs/ARCHITECTURE.md, "Overrides file and the
apply output directory"); a person or another tool may write it too. Only the fields
that carry a decision are required: ``images[].index`` and ``decision`` (``identity`` for a
move), ``merges[].identities`` and ``decision``, ``splits[].identity`` and ``decision``.
:func:`read_overrides` checks the file on its own (JSON, shapes, values, nothing
overridden twice); :mod:`cleanface.purify.apply` checks it against a purify output.
Every problem is one :class:`~cleanface.errors.DataError` line naming the file and the entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanface.errors import DataError

FORMAT = "cleanface-overrides"
VERSION = 1
IMAGE_DECISIONS = ("keep", "drop", "move", "accept")
PROPOSAL_DECISIONS = ("accept", "reject")


@dataclass(frozen=True)
class ImageOverride:
    """One image's review: ``decision`` in :data:`IMAGE_DECISIONS`; ``identity`` names a move's target.

    ``location`` and ``old`` (purify's action when the reviewer saw it) are optional and,
    when given, must match the purify output the overrides are applied to. ``entry``
    is the position in ``images`` (for messages).
    """

    index: int
    decision: str
    entry: int
    identity: str | None = None
    location: str | None = None
    old: str | None = None
    who: str = ""
    when: str = ""


@dataclass(frozen=True)
class ProposalOverride:
    """A merge or split proposal's review: ``names`` (a merge's identities sorted, a split's one identity), ``decision``."""

    names: tuple[str, ...]
    decision: str
    entry: int
    who: str = ""
    when: str = ""


@dataclass
class Overrides:
    """The checked content of an overrides file."""

    path: Path
    images: list[ImageOverride] = field(default_factory=list)
    merges: list[ProposalOverride] = field(default_factory=list)
    splits: list[ProposalOverride] = field(default_factory=list)
    reviewer: str = ""
    review: str = ""

    def where(self, kind: str, entry: int) -> str:
        """``"FILE images[3]"``: where an entry sits, for messages."""
        return f"{self.path} {kind}[{entry}]"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _entries(raw: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
    for entry, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path} {key}[{entry}]: expected an object, got {json.dumps(item)[:60]}")
    return value


def _decision(item: dict[str, Any], allowed: tuple[str, ...], where: str) -> str:
    decision = item.get("decision")
    if decision not in allowed:
        raise DataError(f"{where}: decision must be one of {', '.join(allowed)}, got {decision!r}")
    return decision


def image_override(item: dict[str, Any], entry: int, path: Path) -> ImageOverride:
    """One checked entry of ``images``."""
    where = f"{path} images[{entry}]"
    index = item.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise DataError(f"{where}: index must be a sample index (an integer >= 0), got {index!r}")
    decision = _decision(item, IMAGE_DECISIONS, where)
    identity = item.get("identity")
    if decision == "move" and (not isinstance(identity, str) or not identity):
        raise DataError(f"{where}: a move needs the identity to move image {index} to, got {identity!r}")
    location, old = item.get("location"), item.get("old")
    return ImageOverride(index=index, decision=decision, entry=entry, identity=identity if decision == "move" else None,
                         location=location if isinstance(location, str) else None, old=old if isinstance(old, str) else None,
                         who=_text(item.get("who")), when=_text(item.get("when")))


def merge_override(item: dict[str, Any], entry: int, path: Path) -> ProposalOverride:
    """One checked entry of ``merges``."""
    where = f"{path} merges[{entry}]"
    names = item.get("identities")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{where}: identities must list two or more distinct identity names, got {json.dumps(names)[:80]}")
    return ProposalOverride(tuple(sorted(names)), _decision(item, PROPOSAL_DECISIONS, where), entry, _text(item.get("who")), _text(item.get("when")))


def split_override(item: dict[str, Any], entry: int, path: Path) -> ProposalOverride:
    """One checked entry of ``splits``."""
    where = f"{path} splits[{entry}]"
    name = item.get("identity")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: identity must name the identity of the split proposal, got {name!r}")
    return ProposalOverride((name,), _decision(item, PROPOSAL_DECISIONS, where), entry, _text(item.get("who")), _text(item.get("when")))


def _once(items: list[Any], key: Any, kind: str, what: Any, path: Path) -> None:
    """A :class:`DataError` when two entries of ``items`` share ``key(item)``."""
    seen: dict[Any, int] = {}
    for item in items:
        k = key(item)
        if k in seen:
            raise DataError(f"{path}: {what(item)} is overridden twice ({kind}[{seen[k]}] and {kind}[{item.entry}]); keep one decision")
        seen[k] = item.entry


def read_overrides(path: str | os.PathLike) -> Overrides:
    """Read and check ``path`` (an overrides JSON file); one :class:`DataError` line on the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read overrides file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"overrides file {path} is not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"overrides file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise DataError(f"overrides file {path} must hold a JSON object with images, merges and splits, got {type(raw).__name__}")
    if raw.get("format", FORMAT) != FORMAT:
        raise DataError(f"{path} is not a cleanface overrides file (format {raw.get('format')!r}, expected {FORMAT!r})")
    if raw.get("version", VERSION) != VERSION:
        raise DataError(f"{path}: overrides version {raw.get('version')!r} is not supported (this cleanface reads version {VERSION})")
    if not any(key in raw for key in ("images", "merges", "splits")):
        raise DataError(f"overrides file {path} holds none of images, merges, splits")
    result = Overrides(
        path=path,
        images=[image_override(item, i, path) for i, item in enumerate(_entries(raw, "images", path))],
        merges=[merge_override(item, i, path) for i, item in enumerate(_entries(raw, "merges", path))],
        splits=[split_override(item, i, path) for i, item in enumerate(_entries(raw, "splits", path))],
        reviewer=_text(raw.get("reviewer")), review=_text(raw.get("review")),
    )
    _once(result.images, lambda o: o.index, "images", lambda o: f"image {o.index}", path)
    _once(result.merges, lambda o: o.names, "merges", lambda o: f"the merge of {' and '.join(map(repr, o.names))}", path)
    _once(result.splits, lambda o: o.names, "splits", lambda o: f"the split of {o.names[0]!r}", path)
    return result
