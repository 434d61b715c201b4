"""The review page: a person confirms or overrides purify's decisions in the browser.

Inputs (see docs/ARCHITECTURE.md, "Purify output directory"): ``CLEAN/summary.json``
(``merges``, ``splits``, ``duplicates``) and ``CLEAN/decisions.csv`` (required).
Output (see "Review directory"): a static page that works from ``file://``, offline,
``CLEAN/review/`` by default::

    index.html             the app (loads review.css, review.js and data/meta.js)
    review.js, review.css
    data/meta.js           CF_REVIEW.meta({...}): id, clean, images, identities, total, chunk_size, queues
    data/<queue>-<n>.js    CF_REVIEW.chunk("<queue>", n, [card, ...]): chunk n (from 0) of a queue
    data/names.js          CF_REVIEW.names([...]): every identity name, sorted (loaded when a move opens)
    thumbs/<shard>/<index>.jpg   64 px thumbnails of the faces the cards show
    images/                full-size copies of RecordIO images (links of the thumbnails)

The queues, each ranked so that what a person most likely changes comes first:
``drops`` (action drop, lowest noise score first, then smallest angle), ``suspects``
(action keep with a noise score of at least :data:`SUSPECT_SCORE`, highest first),
``relabels`` (like drops), ``merges`` and ``splits`` (the proposals of ``summary.json``,
highest score first, those without a score after them in their order) and
``duplicates`` (the pairs of ``summary.json``, highest cosine first). Every queue is
listed in ``meta.js``, an empty one with count 0.

Cards are compact JSON objects (they repeat up to hundreds of thousands of times;
absent values are left out). Every card has ``"k"``, its key (``i<index>`` for an
image, ``m:<identity>|...`` for a merge: its sorted identities, ``s:<identity>`` for a
split). A face is ``{"x": sample index, "t": thumbnail src, "h": link to the original}``
(``t``/``h`` absent when there is none). Per queue kind:

* ``image`` (drops, suspects, relabels): ``{"k", "x": index, "l": location, "id": identity,
  "a": purify's action, "n": new identity (when it differs), "r": reason, "s": noise score,
  "g": angle, "o": leave-one-out angle, "t", "h", "ref": [face, ...] (up to :data:`REFERENCE_FACES` kept faces of
  the identity, smallest angle first, to compare with), "nref": the same of the new identity of a relabel}``;
* ``duplicate``: the image card of the pair's second image ``b`` (its key ``i<b>``), plus
  ``"cos"`` and ``"p"``, the first image: ``{"x", "l", "id", "a", "t", "h"}``;
* ``merge``: ``{"k", "ids": [identity, ...], "into", "sc": score, "sim": similarity,
  "ang": [min, max] angle, "ap": merged, "sz": [images of each identity],
  "f": [[face, ...] of each identity]}`` (up to :data:`FACES` kept faces each, smallest angle first);
* ``split``: ``{"k", "id": identity, "sc", "sim", "ang": angle, "ap": applied, "new": the new
  identity's name, "sz": [group sizes], "g": [group titles], "f": [[face, ...] of each group]}``
  (calibrated splits: the first faces of each group; sub-center splits: the kept faces
  nearest each sub-center, smallest angle first).

Thumbnails are written for the faces on the cards only (none with ``placeholder_thumbs``).
The page keeps the reviewer's work in ``localStorage["cleanface-review:" + id]`` (``id`` is
the SHA-256 of ``decisions.csv``) and exports it as ``overrides.json`` (see "Overrides file
and the apply output directory").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cleanface.errors import DataError
from cleanface.progress import make_progress
from cleanface.report._pages import build_report, environment, templates_dir
from cleanface.report.decisions_table import ACTIONS, REMOVED, DecisionTable, read_decisions
from cleanface.report.thumbs import ThumbWriter
from cleanface.report.training import read_json

QUEUES = (  # key, title, kind
    ("drops", "Drops", "image"),
    ("suspects", "Suspects", "image"),
    ("relabels", "Relabels", "image"),
    ("merges", "Merges", "merge"),
    ("splits", "Splits", "split"),
    ("duplicates", "Duplicates", "duplicate"),
)
ASSETS = ("review.js", "review.css")
SUSPECT_SCORE = 0.2  # kept images with a noise score of at least this are suspects
FACES = 6  # faces of each identity of a merge card, of each group of a split card
REFERENCE_FACES = 4  # kept faces of the image's identity (and of a relabel's target) beside an image card, to compare with
_SEPARATORS = (",", ":")


def render_review(
    clean_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    data: Any = None,
    placeholder_thumbs: bool = False,
    chunk_size: int = 50,
    silent: bool = True,
) -> Path:
    """Write the review page of a purify output directory.

    Parameters
    ----------
    clean_dir : path-like
        A purify output directory holding ``summary.json`` and ``decisions.csv``.
    out : path-like, optional
        The review folder (``clean_dir/review`` by default); built under a staging name
        and renamed into place when complete, its thumbnails reused by a later render.
    data : DatasetIndex or path-like, optional
        The input dataset (images are read with ``read_bytes(index)``); by default each
        image is read from the ``location`` column.
    placeholder_thumbs : bool
        Grey boxes instead of thumbnails (no image read, none written).
    chunk_size : int
        Cards per data file (the page holds one chunk of a queue at a time).
    silent : bool
        No progress bar.

    Returns
    -------
    Path
        The written ``index.html``.
    """
    clean_dir = Path(clean_dir)
    if not clean_dir.is_dir():
        raise DataError(f"purify output directory {clean_dir} does not exist")
    if int(chunk_size) < 1:
        raise DataError(f"chunk_size must be positive, got {chunk_size}")
    decisions = clean_dir / "decisions.csv"
    if not decisions.is_file():
        raise DataError(f"{clean_dir} holds no decisions.csv; is it a purify output directory?")
    summary = read_json(clean_dir / "summary.json", "purify summary")
    table = read_decisions(decisions)
    review_id = file_sha256(decisions)
    if isinstance(data, (str, os.PathLike)):
        from cleanface.data.open import open_dataset

        data = open_dataset(data, silent=True)
    out = Path(out) if out is not None else clean_dir / "review"
    with build_report(out) as writer:
        stage = writer.stage
        thumbs = ThumbWriter(stage, writer.final, data=data, placeholder=placeholder_thumbs)
        cards = _Cards(table, summary, thumbs)
        keys, listed = _write_queues(stage / "data", cards.queues(), int(chunk_size), silent)
        meta = {
            "id": review_id, "clean": str(clean_dir.resolve()), "images": len(table), "identities": len(table.names),
            "total": len(keys), "chunk_size": int(chunk_size), "queues": listed,
            "images_after": summary.get("images_after"), "identities_after": summary.get("identities_after"),
            "names": len(cards.names()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "placeholders": bool(placeholder_thumbs), "thumbs_failed": thumbs.failed,
        }
        _write_js(stage / "data" / "meta.js", "CF_REVIEW.meta(" + json.dumps(meta, separators=_SEPARATORS) + ");\n")
        _write_js(stage / "data" / "names.js", "CF_REVIEW.names(" + json.dumps(cards.names(), separators=_SEPARATORS) + ");\n")
        for name in ASSETS:
            shutil.copyfile(templates_dir() / name, stage / name)
        html = environment().get_template("review.html").render(title=f"Review of {clean_dir.resolve().name}", clean=meta["clean"],
                                                                total=len(keys), queues=listed)
        (stage / "index.html").write_text(html.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), encoding="utf-8")
    return out / "index.html"


def _write_queues(folder: Path, queues: dict[str, tuple[list[Any], Any]], chunk_size: int, silent: bool) -> tuple[set[str], list[dict[str, Any]]]:
    """Write every queue's chunk files into ``folder``; the distinct card keys and each queue's entry of ``meta.js``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys: set[str] = set()
    listed = []
    progress = make_progress(silent=silent)
    with progress:
        task = progress.add_task("review cards", total=sum(len(items) for items, _ in queues.values()))
        for key, title, kind in QUEUES:
            items, build = queues[key]
            chunks = math.ceil(len(items) / chunk_size)
            count = 0
            for n in range(chunks):
                part = items[n * chunk_size:(n + 1) * chunk_size]
                built = [c for c in (build(item) for item in part) if c is not None]
                keys.update(c["k"] for c in built)
                count += len(built)
                _write_chunk(folder / f"{key}-{n}.js", key, n, built)
                progress.advance(task, len(part))
            listed.append({"key": key, "title": title, "kind": kind, "count": count, "chunks": chunks})
    return keys, listed


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_data_js(path: str | os.PathLike) -> tuple[str, list[Any]]:
    """The call in a data file of the review page: ``("chunk", ["drops", 0, [card, ...]])``, ``("meta", [{...}])``, ...

    The files are ``CF_REVIEW.<function>(<JSON values, comma separated>);`` and one newline.
    """
    text = Path(path).read_text(encoding="utf-8")
    prefix = "CF_REVIEW."
    head, sep, rest = text.partition("(")
    if not head.startswith(prefix) or not sep or not text.rstrip().endswith(");"):
        raise DataError(f"{path} is not a review data file (CF_REVIEW.<name>(...);)")
    return head[len(prefix):], json.loads("[" + rest.rstrip()[:-2] + "]")


def _write_js(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def _write_chunk(path: Path, queue: str, n: int, cards: list[dict[str, Any]]) -> None:
    body = ",\n".join(json.dumps(c, separators=_SEPARATORS) for c in cards)
    _write_js(path, f"CF_REVIEW.chunk({json.dumps(queue)},{n},[\n{body}\n]);\n")


def _finite(value: Any, digits: int = 4) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return round(out, digits) if math.isfinite(out) else None


def _dicts(summary: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = summary.get(key) or []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _by_score(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``items`` by ``item[key]`` descending; those without a finite value after them, in their order."""
    return sorted(items, key=lambda item: (-v, 0) if (v := _finite(item.get(key), 12)) is not None else (math.inf, 1))


class _Cards:
    """The queues of one review and the card of each item (state shared between the card kinds)."""

    def __init__(self, table: DecisionTable, summary: dict[str, Any], thumbs: ThumbWriter) -> None:
        self.table, self.summary, self.thumbs = table, summary, thumbs
        self.code = {name: i for i, name in enumerate(table.names)}
        self._kept: tuple[np.ndarray, np.ndarray] | None = None
        self._sorted_index: tuple[np.ndarray, np.ndarray] | None = None
        self.merges = _by_score([m for m in _dicts(summary, "merges") if isinstance(m.get("identities"), list) and m["identities"]], "score")
        self.splits = _by_score([v for v in _dicts(summary, "splits") if v.get("identity") not in (None, "")], "score")
        pairs = [d for d in _dicts(summary, "duplicates") if isinstance(d.get("b"), int)]
        known = set(self.table.index[self.rows_of_indices(d["b"] for d in pairs)].tolist())
        self.duplicates = _by_score([d for d in pairs if d["b"] in known], "cos")  # a pair whose second image is not in decisions.csv: nothing to review

    # -- the queues ---------------------------------------------------------------------------
    def queues(self) -> dict[str, tuple[Any, Any]]:
        """Queue key -> (items in rank order, the function making an item's card (None to leave it out))."""
        t = self.table
        score = t.noise_score.astype(np.float64) if len(t.noise_score) == len(t) else np.full(len(t), np.nan)
        angle = np.where(np.isfinite(t.angle), t.angle, np.inf).astype(np.float64)
        low_score = np.where(np.isfinite(score), score, np.inf)

        def ascending(action: str) -> np.ndarray:
            rows = np.flatnonzero(t.action == ACTIONS.index(action))
            return rows[np.lexsort((t.index[rows], angle[rows], low_score[rows]))]

        suspects = np.flatnonzero((t.action == ACTIONS.index("keep")) & (np.nan_to_num(score, nan=-1.0) >= SUSPECT_SCORE))
        loo = np.nan_to_num(t.loo_angle.astype(np.float64), nan=-1.0) if len(t.loo_angle) == len(t) else np.zeros(len(t))
        suspects = suspects[np.lexsort((t.index[suspects], -loo[suspects], -score[suspects]))]
        self.score = score
        return {
            "drops": (ascending("drop"), self.image_card),
            "suspects": (suspects, self.image_card),
            "relabels": (ascending("relabel"), self.image_card),
            "merges": (self.merges, self.merge_card),
            "splits": (self.splits, self.split_card),
            "duplicates": (self.duplicates, self.duplicate_card),
        }

    def names(self) -> list[str]:
        """Every identity a move may name: input and output identities, and ``<name>#2`` of every split proposal."""
        if not hasattr(self, "_names"):
            found = set(self.table.names) | set(self.table.new_names)
            for item in self.splits:
                name = str(item.get("identity", ""))
                if name:
                    found.add(str(item.get("new_identity") or f"{name}#2"))
            found.discard("")
            self._names = sorted(found)
        return self._names

    # -- helpers ----------------------------------------------------------------------------------
    def face(self, row: int) -> dict[str, Any]:
        t = self.table
        index = int(t.index[row])
        thumb = self.thumbs.thumb(index, t.location[row], ACTIONS[int(t.action[row])], "")
        out: dict[str, Any] = {"x": index}
        if thumb.src:
            out["t"] = thumb.src
        if thumb.href:
            out["h"] = thumb.href
        return out

    def rows_of_indices(self, indices: Iterable[Any]) -> np.ndarray:
        """The rows of sample indices (those not in decisions.csv left out), in the given order."""
        if self._sorted_index is None:
            order = np.argsort(self.table.index, kind="stable")
            self._sorted_index = (self.table.index[order], order)
        values, order = self._sorted_index
        try:
            wanted = np.asarray([int(i) for i in indices], dtype=np.int64)
        except (TypeError, ValueError):
            return np.zeros(0, np.int64)
        if not len(values):
            return np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(values, wanted), len(values) - 1)
        return order[pos[values[pos] == wanted]]

    def kept_rows(self, code: int) -> np.ndarray:
        """The kept rows of input identity ``code`` (action keep, merge or new-identity: not removed nor relabelled), smallest angle first."""
        if self._kept is None:
            t = self.table
            rows = np.flatnonzero(~np.isin(t.action, [ACTIONS.index(a) for a in (*REMOVED, "relabel")]))
            angle = np.where(np.isfinite(t.angle[rows]), t.angle[rows], np.inf)
            rows = rows[np.lexsort((t.index[rows], angle, t.identity[rows]))]
            counts = np.bincount(t.identity[rows], minlength=len(t.names))
            self._kept = (rows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        rows, starts = self._kept
        return rows[starts[code]:starts[code + 1]]

    def size(self, code: int | None) -> int:
        if not hasattr(self, "_sizes"):
            self._sizes = np.bincount(self.table.identity, minlength=len(self.table.names))
        return 0 if code is None else int(self._sizes[code])

    # -- cards --------------------------------------------------------------------------------------
    def image_card(self, row: Any) -> dict[str, Any]:
        t, row = self.table, int(row)
        index = int(t.index[row])
        identity = t.names[int(t.identity[row])]
        card: dict[str, Any] = {"k": f"i{index}", "x": index, "l": t.location[row], "id": identity, "a": ACTIONS[int(t.action[row])]}
        new = int(t.new_identity[row])
        if new >= 0 and t.new_names[new] != identity:
            card["n"] = t.new_names[new]
        reason = t.reasons[int(t.reason[row])]
        if reason:
            card["r"] = reason
        for name, value in (("s", self.score[row]), ("g", t.angle[row]), ("o", t.loo_angle[row] if len(t.loo_angle) == len(t) else None)):
            value = _finite(value)
            if value is not None:
                card[name] = value
        face = self.face(row)
        for name in ("t", "h"):
            if name in face:
                card[name] = face[name]
        card["ref"] = self.reference_faces(int(t.identity[row]), index)
        if "n" in card and self.code.get(card["n"]) is not None:
            card["nref"] = self.reference_faces(self.code[card["n"]], index)
        return card

    def reference_faces(self, code: int, skip: int) -> list[dict[str, Any]]:
        """Up to :data:`REFERENCE_FACES` kept faces of input identity ``code`` (smallest angle first), sample ``skip`` left out."""
        rows = self.kept_rows(code)[:REFERENCE_FACES + 1]
        return [self.face(int(r)) for r in rows if int(self.table.index[r]) != skip][:REFERENCE_FACES]

    def merge_card(self, item: dict[str, Any]) -> dict[str, Any] | None:
        ids = [str(n) for n in item.get("identities") or []]
        if not ids:
            return None
        codes = [self.code.get(n) for n in ids]
        card: dict[str, Any] = {"k": "m:" + "|".join(sorted(ids)), "ids": ids}
        if item.get("into") is not None:
            card["into"] = str(item["into"])
        for name, key in (("sc", "score"), ("sim", "similarity")):
            value = _finite(item.get(key))
            if value is not None:
                card[name] = value
        angles = [_finite(item.get(k), 2) for k in ("min_angle", "max_angle")] if ("min_angle" in item or "max_angle" in item) \
            else [_finite(item.get("angle"), 2)] * 2
        if any(a is not None for a in angles):
            card["ang"] = angles
        card["ap"] = bool(item.get("merged", item.get("applied", False)))
        card["sz"] = [self.size(c) for c in codes]
        card["f"] = [[self.face(int(r)) for r in self.kept_rows(c)[:FACES]] if c is not None else [] for c in codes]
        return card

    def split_card(self, item: dict[str, Any]) -> dict[str, Any] | None:
        name = str(item.get("identity", ""))
        if not name:
            return None
        card: dict[str, Any] = {"k": f"s:{name}", "id": name}
        for key, source in (("sc", "score"), ("sim", "similarity"), ("ang", "angle")):
            value = _finite(item.get(source))
            if value is not None:
                card[key] = value
        card["ap"] = bool(item.get("applied", False))
        card["new"] = str(item.get("new_identity") or f"{name}#2")
        code = self.code.get(name)
        if isinstance(item.get("groups"), list):  # calibrated rule: the first sample indices of each group
            groups = [g if isinstance(g, list) else [] for g in item["groups"]]
            sizes = list(item.get("sizes") or [])
            card["sz"] = [int(sizes[k]) if k < len(sizes) and isinstance(sizes[k], (int, float)) else len(g) for k, g in enumerate(groups)]
            card["g"] = [f"group {k + 1}" for k in range(len(groups))]
            card["f"] = [[self.face(int(r)) for r in self.rows_of_indices(g)[:FACES]] for g in groups]
            return card
        subs = list(item.get("subcenters") or [])  # sub-center rule: the kept faces nearest each sub-center
        shares = list(item.get("shares") or [])
        rows = self.kept_rows(code) if code is not None else np.zeros(0, np.int64)
        faces, sizes, titles = [], [], []
        for k, sub in enumerate(subs):
            try:
                members = rows[self.table.nearest[rows] == int(sub)]
            except (TypeError, ValueError):
                members = rows[:0]
            share = _finite(shares[k], 4) if k < len(shares) else None
            titles.append(f"sub-center {sub}" + (f" ({100 * share:.0f}%)" if share is not None else ""))
            sizes.append(len(members))
            faces.append([self.face(int(r)) for r in members[:FACES]])
        card["sz"], card["g"], card["f"] = sizes, titles, faces
        return card

    def duplicate_card(self, item: dict[str, Any]) -> dict[str, Any] | None:
        rows = self.rows_of_indices([item.get("b"), item.get("a", -1)]) if "a" in item else self.rows_of_indices([item.get("b")])
        if not len(rows) or int(self.table.index[rows[0]]) != int(item["b"]):
            return None  # the second image is not in decisions.csv: nothing to review
        card = self.image_card(int(rows[0]))
        cos = _finite(item.get("cos"), 6)
        if cos is not None:
            card["cos"] = cos
        if len(rows) > 1:
            t, a = self.table, int(rows[1])
            first = {"x": int(t.index[a]), "l": t.location[a], "id": t.names[int(t.identity[a])], "a": ACTIONS[int(t.action[a])]}
            first.update({k: v for k, v in self.face(a).items() if k != "x"})
            card["p"] = first
        elif "a" in item:
            card["p"] = {"x": item["a"], "id": str(item.get("a_identity", "?"))}
        return card
