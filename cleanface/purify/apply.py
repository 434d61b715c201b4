"""``cleanface apply``: a purify output plus a reviewer's overrides to the final dataset.

:func:`apply_overrides` reads a complete purify output ``CLEAN`` (``decisions.csv``,
``summary.json``, ``analysis.npz``, ``run_info.json``), the input dataset it decided on and
an overrides file (:mod:`cleanface.purify.overrides`), and writes ``FINAL`` (layout in
docs/ARCHITECTURE.md, "Overrides file and the apply output directory"). Identity-level
overrides apply first (merges accepted or rejected, splits accepted or rejected), then the
image overrides (keep, drop, move, accept). Every override is checked against ``CLEAN``
before anything is written; ``CLEAN`` and the input dataset are only read, and ``FINAL``
is built in a staging directory renamed when complete, under a lock.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cleanface._atomic import RunLock, atomic_write, atomic_write_json, check_output_dir, is_complete, mark_complete, remove_path, staging_dir
from cleanface._json import read_json
from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError
from cleanface.purify.codes import ACTIONS, DROP, IN_OUTPUT, KEEP, MERGE, NEW_IDENTITY, RELABEL
from cleanface.purify.naming import unique_name
from cleanface.purify.overrides import ImageOverride, Overrides, ProposalOverride, read_overrides
from cleanface.purify.runner import FORMATS, write_cleaned_dataset

REVIEWED = "reviewed"  # the reason of every row a review changed
REVIEW_STATES = ("", "accepted", "overridden")
EXTRA_COLUMNS = ("review", "purify_action", "purify_new_identity", "purify_reason")
NOT_REVIEWED, ACCEPTED, OVERRIDDEN = range(3)


# -- reading the purify output ------------------------------------------------------------------
@dataclass
class DecisionRows:
    """The columns of a ``decisions.csv`` that a review changes, as arrays over its rows (R rows).

    ``sample`` is the dataset index (-1 for the input entries that indexing set aside),
    ``old`` and ``new`` are codes into ``names`` (``new`` -1 for an image out of the set),
    ``action`` codes into :data:`ACTIONS`, ``reason`` codes into ``reasons``.
    """

    header: list[str]
    sample: np.ndarray
    old: np.ndarray
    new: np.ndarray
    action: np.ndarray
    reason: np.ndarray
    names: list[str]
    reasons: list[str]
    locations: dict[int, str] = field(default_factory=dict)  # the rows of overridden images only

    def code(self, name: str) -> int | None:
        """The code of identity ``name`` into ``names``, or None."""
        return self._codes.get(name)

    def add_name(self, name: str) -> int:
        """Add a new identity name; its code."""
        self.names.append(name)
        self._codes[name] = len(self.names) - 1
        return len(self.names) - 1

    def __post_init__(self) -> None:
        self._codes = {n: i for i, n in enumerate(self.names)}

    def row_of(self) -> dict[int, int]:
        """Row of each dataset sample index."""
        rows = np.flatnonzero(self.sample >= 0)
        return dict(zip(self.sample[rows].tolist(), rows.tolist()))


def _csv_rows(path: Path) -> Iterator[list[str]]:
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        yield from csv.reader(handle)


def _location_matches(index: DatasetIndex, i: int, location: str) -> bool:
    """Whether ``location`` (a decisions.csv cell) names sample ``i`` of ``index`` (the same file, wherever the root was given from)."""
    if index.kind == "rec":
        return location.rsplit("@", 1)[-1] == str(int(index.offsets[i]))  # type: ignore[index]
    path = index.paths[i]
    return location == index.location(i) or location.replace(os.sep, "/").endswith("/" + path.replace(os.sep, "/"))


def read_decision_rows(path: Path, index: DatasetIndex, wanted: set[int]) -> DecisionRows:
    """Read ``path`` (a purify ``decisions.csv``), checking row by row that it describes ``index``.

    ``wanted``: the sample indices whose locations to keep (the overridden images).
    A :class:`DataError` names the file and line of the first row that does not fit.
    """
    rows = _csv_rows(path)
    header = next(rows, None)
    need = ("index", "location", "old_identity", "new_identity", "action", "reason")
    if header is None or any(c not in header for c in need):
        raise DataError(f"{path} is not a purify decisions.csv (expected the columns {', '.join(need)})")
    c_idx, c_loc, c_old, c_new, c_act, c_rea = (header.index(c) for c in need)
    names: dict[str, int] = {}
    reasons: dict[str, int] = {}
    action_code = {a: i for i, a in enumerate(ACTIONS)}
    sample, old, new, action, reason = ([] for _ in range(5))
    locations: dict[int, str] = {}
    seen = 0
    for lineno, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < len(header) or row[c_act] not in action_code:
            raise DataError(f"{path} line {lineno}: expected {len(header)} fields with an action of {', '.join(ACTIONS)}")
        if row[c_idx] == "":
            sample.append(-1)
        else:
            i = int(row[c_idx]) if row[c_idx].isdigit() else -2
            if i != seen or i >= len(index) or not _location_matches(index, i, row[c_loc]):
                found = index.location(i) if 0 <= i < len(index) else "no such sample"
                raise DataError(f"{path} line {lineno} ({row[c_loc]}) does not describe sample {row[c_idx]} of dataset {index.root} "
                                f"({found}): the dataset changed since purify, or pass the dataset purify read (--data)")
            seen += 1
            sample.append(i)
            if i in wanted:
                locations[i] = row[c_loc]
        old.append(names.setdefault(row[c_old], len(names)) if row[c_old] else -1)
        new.append(names.setdefault(row[c_new], len(names)) if row[c_new] else -1)
        action.append(action_code[row[c_act]])
        reason.append(reasons.setdefault(row[c_rea], len(reasons)))
    if seen != len(index):
        raise DataError(f"{path} describes {seen} images but dataset {index.root} has {len(index)}: pass the dataset purify read (--data)")
    return DecisionRows(header, np.array(sample, np.int64), np.array(old, np.int64), np.array(new, np.int64), np.array(action, np.int8),
                        np.array(reason, np.int64), list(names), list(reasons), locations)


def _split_groups(clean: Path, rows: int) -> np.ndarray | None:
    """``analysis.npz``'s ``split_group`` (N,), or None when the output predates it."""
    try:
        with np.load(clean / "analysis.npz", allow_pickle=False) as arrays:
            if "split_group" not in arrays.files:
                return None
            groups = np.asarray(arrays["split_group"])
    except (OSError, ValueError):
        return None
    return groups if len(groups) == rows else None


def input_dataset(clean: Path, data: str | os.PathLike | None, info: dict[str, Any]) -> DatasetIndex:
    """The dataset ``clean`` decided on: ``data`` when given, else the one its ``run_info.json`` names."""
    from cleanface.data.open import open_dataset

    source = data if data is not None else info.get("data")
    if not source or not os.path.exists(source):
        named = f"dataset {source}" if source else "no dataset"
        raise DataError(f"{clean}/run_info.json names {named}, which does not exist here; pass the dataset purify read (--data)")
    return open_dataset(source, silent=True)


# -- the review ---------------------------------------------------------------------------------
@dataclass
class Review:
    """The decisions after a review: new ``action``, ``new`` and per-row ``review`` state (R rows), and what changed."""

    action: np.ndarray
    new: np.ndarray
    review: np.ndarray
    merges: dict[tuple[str, ...], str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    split_names: dict[str, str] = field(default_factory=dict)


class _Reviewer:
    """Applies checked overrides to :class:`DecisionRows`; every misfit is a one-line :class:`DataError`."""

    def __init__(self, rows: DecisionRows, summary: dict[str, Any], split_group: np.ndarray | None, overrides: Overrides, clean: Path) -> None:
        self.rows, self.summary, self.split_group, self.overrides, self.clean = rows, summary, split_group, overrides, clean
        self.result = Review(rows.action.copy(), rows.new.copy(), np.zeros(len(rows.action), np.int8))
        self.merged_into: dict[int, int] = {}  # identity code -> the code it is merged into
        for item in self._proposals("merges"):
            if item.get("merged"):
                self._set_merge(item, True)

    # identities ---------------------------------------------------------------------------------
    def _proposals(self, key: str) -> list[dict[str, Any]]:
        value = self.summary.get(key) or []
        return [item for item in value if isinstance(item, dict)]

    def _code(self, name: str, where: str) -> int:
        code = self.rows.code(name)
        if code is None:
            raise DataError(f"{where}: unknown identity {name!r} (not an identity of {self.clean}/decisions.csv)")
        return code

    def output_of(self, code: int) -> int:
        """The identity an input identity leaves the review as (merges followed)."""
        return self.merged_into.get(code, code)

    def _set_merge(self, item: dict[str, Any], merged: bool) -> None:
        into = self._code(item["into"], f"{self.clean}/summary.json")
        for name in item["identities"]:
            code = self._code(name, f"{self.clean}/summary.json")
            if code == into:
                continue
            if merged:
                self.merged_into[code] = into
            else:
                self.merged_into.pop(code, None)

    def merge(self, override: ProposalOverride) -> None:
        where = self.overrides.where("merges", override.entry)
        item = next((m for m in self._proposals("merges") if tuple(sorted(m.get("identities", []))) == override.names), None)
        if item is None:
            raise DataError(f"{where}: {self.clean}/summary.json has no merge proposal of {' and '.join(map(repr, override.names))}")
        self.result.merges[override.names] = override.decision
        into = self._code(item["into"], where)
        members = [self._code(n, where) for n in item["identities"] if n != item["into"]]
        res, rows = self.result, self.rows
        if override.decision == "accept" and not item.get("merged"):
            self._set_merge(item, True)
            moving = np.isin(res.new, members) & np.isin(res.action, IN_OUTPUT)
            res.action[moving & (res.action == KEEP)] = MERGE
            res.new[moving] = into
            res.review[moving] = OVERRIDDEN
        elif override.decision == "reject" and item.get("merged"):
            self._set_merge(item, False)
            back = (res.action == MERGE) & np.isin(rows.old, members) & (res.new == into)
            res.action[back] = KEEP
            res.new[back] = rows.old[back]
            res.review[back] = OVERRIDDEN

    def split(self, override: ProposalOverride) -> None:
        where = self.overrides.where("splits", override.entry)
        name = override.names[0]
        item = next((s for s in self._proposals("splits") if s.get("identity") == name), None)
        if item is None:
            raise DataError(f"{where}: {self.clean}/summary.json has no split proposal of {name!r}")
        self.result.splits[name] = override.decision
        code, res, rows = self._code(name, where), self.result, self.rows
        if override.decision == "accept" and not item.get("applied"):
            if self.split_group is None:
                raise DataError(f"{where}: {self.clean}/analysis.npz holds no split groups (written by an older cleanface); "
                                "purify again to accept splits")
            new_name = unique_name(f"{name}#2", set(rows.names))
            target = rows.add_name(new_name)
            self.result.split_names[name] = new_name
            moving = (self.split_group == 1) & (rows.old == code)  # what purify --split moves, whatever the image rules decided
            res.action[moving] = NEW_IDENTITY
            res.new[moving] = target
            res.review[moving] = OVERRIDDEN
        elif override.decision == "reject" and item.get("applied"):
            second = rows.code(str(item.get("new_identity", "")))
            back = (res.action == NEW_IDENTITY) & (rows.old == code) & (res.new == (-2 if second is None else second))
            res.action[back] = KEEP
            res.new[back] = self.output_of(code)
            res.review[back] = OVERRIDDEN

    # images -------------------------------------------------------------------------------------
    def image(self, override: ImageOverride, row: int | None) -> None:
        where = self.overrides.where("images", override.entry)
        rows, res = self.rows, self.result
        if row is None:
            raise DataError(f"{where}: unknown image {override.index} ({self.clean}/decisions.csv lists {int((rows.sample >= 0).sum())} images)")
        location = rows.locations.get(override.index, "")
        if override.location is not None and override.location != location:
            raise DataError(f"{where}: image {override.index} is {location} in {self.clean}/decisions.csv, not {override.location}")
        purify_action = ACTIONS[rows.action[row]]
        if override.old is not None and override.old != purify_action:
            raise DataError(f"{where}: purify's decision for image {override.index} is {purify_action}, not {override.old} "
                            "(were these overrides made on another purify output?)")
        if override.decision == "accept":
            res.review[row] = max(res.review[row], ACCEPTED)
            return
        own = self.output_of(int(rows.old[row]))
        if override.decision == "drop":
            action, new = DROP, -1
        elif override.decision == "keep":
            action, new = (KEEP if own == rows.old[row] else MERGE), own
        else:
            target = rows.code(override.identity or "")
            if target is None:
                target = self._split_target(override.identity or "", where)
            new = self.output_of(target)
            action = KEEP if new == own else RELABEL
        changed = action != res.action[row] or new != res.new[row]
        res.action[row], res.new[row] = action, new
        res.review[row] = OVERRIDDEN if changed or res.review[row] == OVERRIDDEN else ACCEPTED


    def _split_target(self, name: str, where: str) -> int:
        """The code of ``name`` when it is the new identity of a split these overrides accept; else a :class:`DataError`."""
        for identity, new_name in self.result.split_names.items():
            if name in (new_name, f"{identity}#2"):
                return self._code(new_name, where)
        proposed = [s.get("identity") for s in self._proposals("splits") if f"{s.get('identity')}#2" == name]
        if proposed:
            raise DataError(f"{where}: identity {name!r} exists only when the split of {proposed[0]!r} is accepted; accept it in the same overrides")
        return self._code(name, where)


def review_decisions(rows: DecisionRows, summary: dict[str, Any], split_group: np.ndarray | None, overrides: Overrides,
                     clean: Path) -> Review:
    """The decisions of ``rows`` after ``overrides``: identity-level overrides first, then image overrides, in file order."""
    reviewer = _Reviewer(rows, summary, split_group, overrides, clean)
    for override in overrides.merges:
        reviewer.merge(override)
    for override in overrides.splits:
        reviewer.split(override)
    row_of = rows.row_of()
    for image in overrides.images:
        reviewer.image(image, row_of.get(image.index))
    return reviewer.result


# -- writing ------------------------------------------------------------------------------------
def _final_rows(path: Path, rows: DecisionRows, review: Review) -> Iterator[list[str]]:
    """The rows of FINAL's ``decisions.csv``: CLEAN's, the reviewed ones changed, with the purify columns after."""
    width = len(rows.header)
    c_new, c_act, c_rea = (rows.header.index(c) for c in ("new_identity", "action", "reason"))
    source = _csv_rows(path)
    next(source)
    yield [*rows.header, *EXTRA_COLUMNS]
    r = 0
    for row in source:
        if not row:
            continue
        row = row[:width]
        state = int(review.review[r])
        purify = [row[c_act], row[c_new], row[c_rea]]
        if state == OVERRIDDEN:
            new = int(review.new[r])
            row[c_act], row[c_new], row[c_rea] = ACTIONS[review.action[r]], rows.names[new] if new >= 0 else "", REVIEWED
        yield [*row, REVIEW_STATES[state], *purify]
        r += 1


def _write_decisions(target: Path, source: Path, rows: DecisionRows, review: Review) -> None:
    with atomic_write(target, "wb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
        csv.writer(text, lineterminator="\n").writerows(_final_rows(source, rows, review))
        text.flush()
        text.detach()


def final_summary(summary: dict[str, Any], rows: DecisionRows, review: Review, clean: Path, overrides: Overrides) -> dict[str, Any]:
    """CLEAN's summary updated to the reviewed decisions, with a ``review`` block (truth metrics of CLEAN no longer apply: dropped)."""
    result = {k: v for k, v in summary.items() if k != "truth"}
    indexed = rows.sample >= 0
    kept = indexed & np.isin(review.action, IN_OUTPUT)
    result["images_after"] = int(kept.sum())
    result["identities_after"] = int(len(np.unique(review.new[kept])))
    result["actions"] = {a: int(((review.action == code) & indexed).sum()) for code, a in enumerate(ACTIONS)}
    for item in result.get("merges") or []:
        decision = review.merges.get(tuple(sorted(item.get("identities", []))))
        if decision is not None:
            item["merged"], item["reviewed"] = decision == "accept", decision
    for item in result.get("splits") or []:
        decision = review.splits.get(item.get("identity"))
        if decision is not None:
            item["applied"], item["reviewed"] = decision == "accept", decision
            if item["identity"] in review.split_names:
                item["new_identity"] = review.split_names[item["identity"]]
    decided = list(review.merges.values()), list(review.splits.values())
    result["review"] = {
        "source": str(clean.resolve()), "overrides": str(overrides.path.resolve()), "reviewer": overrides.reviewer,
        "images": {"accepted": int((review.review == ACCEPTED).sum()), "overridden": int((review.review == OVERRIDDEN).sum()),
                   "in_file": len(overrides.images)},
        "merges": {"accepted": decided[0].count("accept"), "rejected": decided[0].count("reject")},
        "splits": {"accepted": decided[1].count("accept"), "rejected": decided[1].count("reject")},
    }
    return result


def apply_overrides(
    clean: str | os.PathLike,
    overrides: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    fmt: str | None = None,
    copy: bool = False,
    overwrite: bool = False,
    silent: bool = False,
) -> Path:
    """Write ``out``: the dataset and decisions of the purify output ``clean`` after the reviewer's ``overrides``.

    ``data``: the input dataset purify decided on (default: the one ``clean/run_info.json``
    names); ``fmt``: the format of the final dataset (default: ``clean``'s); ``copy``: copy
    image files instead of hard-linking them. Every override is checked before anything
    is written (unknown image, identity or proposal, a ``location`` or ``old`` decision
    that differs from ``clean``, an image overridden twice, malformed JSON: one
    :class:`DataError` line). Returns ``out``.
    """
    started = time.time()
    clean, out = Path(clean), Path(out)
    if not is_complete(clean):
        raise DataError(f"{clean} is not a complete purify output (no COMPLETE marker)")
    summary = read_json(clean / "summary.json", "purify summary")
    info = read_json(clean / "run_info.json", "purify run info") if (clean / "run_info.json").is_file() else {}
    fmt = fmt or str(summary.get("format") or "folder")
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    checked = read_overrides(overrides)
    with RunLock.beside(out):
        check_output_dir(out, overwrite=overwrite)
        index = input_dataset(clean, data, info)
        rows = read_decision_rows(clean / "decisions.csv", index, {o.index for o in checked.images})
        review = review_decisions(rows, summary, _split_groups(clean, len(index)), checked, clean)
        kept = np.flatnonzero((rows.sample >= 0) & np.isin(review.action, IN_OUTPUT))
        if len(kept) == 0:
            raise DataError(f"the overrides of {checked.path} leave no image in the dataset")
        with staging_dir(out, overwrite=overwrite) as stage:
            for entry in sorted(os.listdir(stage)):  # leftovers of an interrupted attempt
                remove_path(stage / entry)
            samples = rows.sample[kept]
            write_cleaned_dataset(stage, index, samples, review.new[kept], rows.names, fmt=fmt, copy=copy, silent=silent)
            _write_decisions(stage / "decisions.csv", clean / "decisions.csv", rows, review)
            atomic_write_json(stage / "summary.json", final_summary(summary, rows, review, clean, checked))
            shutil.copyfile(checked.path, stage / "overrides.json")
            atomic_write_json(stage / "run_info.json", {"clean": str(clean.resolve()), "overrides": str(checked.path.resolve()),
                                                        "data": str(index.root), "format": fmt, "started": started, "finished": time.time()})
            mark_complete(stage, {"images_after": int(len(kept))})
    return out

