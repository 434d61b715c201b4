"""The purify report: what was dropped, relabelled and merged, and why, down to every image.

Inputs (see docs/ARCHITECTURE.md, "Purify output directory"): ``summary.json`` and
``decisions.csv`` (required); ``run_info.json`` (optional: the dataset and truth paths).
``analysis.npz`` is not needed: the per-identity numbers are recomputed from
``decisions.csv``. Output: ``CLEAN/report/``::

    index.html                     summary, angle histograms, drop rule, flag quality, links
    pages/identities-<key>-<p>.html  the identity table, one pre-sorted set of pages per key
    identities/<n>.html            one page per input identity (n: order of first appearance)
    pages/<list>-<p>.html          merges, relabels, splits, duplicates, outlier groups, most suspect images
    thumbs/, images/               thumbnails; full-size copies of RecordIO images

The candidate lists of ``summary.json`` are read with these item shapes (missing keys
are tolerated, unknown keys ignored):

* ``merges``: ``{"identities": [name, ...], "into": name, "min_angle": deg, "max_angle": deg,
  "merged": bool}`` (a single ``"angle"`` is accepted in place of the two angles); the
  calibrated merge rule adds ``"similarity"`` and ``"score"``, shown in place of the angle;
* ``splits``: ``{"identity": name, "subcenters": [a, b], "shares": [s1, s2], "angle": deg, "applied": bool}``
  (the sub-center rule), or, from the calibrated split rule, ``{"identity": name, "sizes": [n0, n1],
  "similarity", "angle", "score", "groups": [[sample index, ...], [...]], "applied", "new_identity"}``:
  each group's faces by sample index;
* ``duplicates``: ``{"a": sample index, "b": sample index, "cos": float}``;
* ``outlier_groups``: ``{"group": n, "size": n, "first_indices": [sample index, ...] (or "members"),
  "identities": {name: count}, "new_identity": name}``.

The calibrated drop rule is read from ``summary.json`` (``drop_rule``; ``calibration``:
``{"used": true, "noise_rate", "clean_mean", "clean_std", "impostor_median", "threshold",
"cut", "angles", "impostors", ...}`` or ``{"used": false, "reason": ...}``) and from the
``noise_score`` and ``loo_angle`` columns of ``decisions.csv``; reports of older outputs,
which lack them, simply leave the calibrated parts out. The calibrated merge and split
rules are read from ``identity_calibration`` (``{"merge": {...}, "split": {...}}``, each
``{"used": true, "same_person_rate" | "two_people_rate", ...}`` or ``{"used": false, "reason"}``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from markupsafe import Markup

from cleanface.errors import DataError
from cleanface.progress import make_progress
from cleanface.report import svg
from cleanface.report._pages import ReportWriter, build_report, pager, pages_of
from cleanface.report._pages import svg as safe_svg
from cleanface.report.decisions_table import (
    ACTION_LABELS,
    ACTIONS,
    DecisionTable,
    group_order,
    identity_stats,
    join_noise_types,
    read_decisions,
    share_out,
    spread_evenly,
)
from cleanface.report.inversions import SubcenterImage, find_inversions, place
from cleanface.report.thumbs import Thumb, ThumbWriter
from cleanface.report.training import read_json

ROWS_PER_PAGE = 500
SORT_KEYS = {
    "dropped": ("dropped share", "largest share of removed images first"),
    "size": ("size", "most images first"),
    "spread": ("angle spread", "widest angle spread (90th - 10th percentile) first"),
}
LISTS = {
    "merges": "Merge candidates",
    "relabels": "Relabel moves",
    "splits": "Split candidates",
    "duplicates": "Near-duplicate pairs",
    "outliers": "Outlier groups",
    "suspects": "Most suspect images",
}
MOST_SUSPECT = 1000  # images of the "most suspect" list (highest noise scores), like the 1000 reported duplicate pairs
FACES_PER_MERGE = 4
FACES_PER_SPLIT = 4
FACES_PER_GROUP = 8


def render_purify_report(
    clean_dir: str | os.PathLike,
    *,
    data: Any = None,
    max_thumbs_per_page: int = 240,
    placeholder_thumbs: bool = False,
    rows_per_page: int = ROWS_PER_PAGE,
    inversions: str | os.PathLike | None = None,
    silent: bool = True,
) -> Path:
    """Write ``clean_dir/report/`` for a purify output directory.

    Parameters
    ----------
    clean_dir : path-like
        A purify output directory holding ``summary.json`` and ``decisions.csv``.
    data : DatasetIndex or path-like, optional
        The input dataset (images are read with ``read_bytes(index)``); by default each
        image is read from the ``location`` column (a file path, or ``file.rec@offset``).
    max_thumbs_per_page : int
        Most thumbnails on one page; identity pages show an even spread of each
        sub-center group beyond it, list pages are paginated to it.
    placeholder_thumbs : bool
        Draw grey boxes instead of images (nothing read, nothing written).
    rows_per_page : int
        Rows per page of the identity table.
    inversions : path-like, optional
        A folder written by ``cleanface invert RUN --sub-centers`` (:mod:`cleanface.report.inversions`):
        each identity page shows the face synthesised from each of its sub-centers. By default
        ``clean_dir/inversions`` is used when it holds a finished one.
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
    if max_thumbs_per_page < 1 or rows_per_page < 1:
        raise DataError(f"max_thumbs_per_page and rows_per_page must be positive, got {max_thumbs_per_page} and {rows_per_page}")
    summary = read_json(clean_dir / "summary.json", "purify summary")
    table = read_decisions(clean_dir / "decisions.csv")
    if isinstance(data, (str, os.PathLike)):
        from cleanface.data.open import open_dataset

        data = open_dataset(data, silent=True)
    info = _run_info(clean_dir)
    noise = _noise_types(table, summary, info)
    synthesised = find_inversions(clean_dir, inversions)
    with build_report(clean_dir / "report") as writer:
        thumbs = ThumbWriter(writer.stage, writer.final, data=data, placeholder=placeholder_thumbs)
        page = _PurifyPages(writer, thumbs, table, summary, noise=noise, max_thumbs=max_thumbs_per_page, rows_per_page=rows_per_page,
                            silent=silent, synthesised=synthesised)
        page.identity_pages()
        page.identity_tables()
        lists = page.candidate_lists()
        page.index(clean_dir, lists, noise, info)
    return clean_dir / "report" / "index.html"


def _run_info(clean_dir: Path) -> dict[str, Any]:
    path = clean_dir / "run_info.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _noise_types(table: DecisionTable, summary: dict[str, Any], info: dict[str, Any]) -> np.ndarray | None:
    """Noise type per row: the ``noise_type`` column, else a join with the truth file the purify run used."""
    if table.noise_type is not None:
        return table.noise_type
    if not summary.get("truth"):
        return None
    settings = summary.get("settings") or {}
    truth = settings.get("truth") or info.get("truth")
    if not truth:
        return None
    return join_noise_types(table, truth, settings.get("data") or info.get("data"))


def _caption(table: DecisionTable, row: int) -> str:
    angle = table.angle[row]
    text = f"{angle:.1f}\u00b0" if np.isfinite(angle) else "no angle"
    action = ACTIONS[int(table.action[row])]
    text += f" {ACTION_LABELS[action]}"
    if action in ("relabel", "merge", "new-identity") and table.new_identity[row] >= 0:
        new = table.new_names[int(table.new_identity[row])]
        if new != table.names[int(table.identity[row])]:
            text += f" \u2192 {new}"
    score = table.noise_score[row]
    if np.isfinite(score):
        text += f" noise {score:.2f}"
    return text


def _by_noise_type(values: np.ndarray, noise: np.ndarray | None) -> Any:
    """The finite ``values``, split by noise type (a mapping, known types first) when ``noise`` is given."""
    finite = np.isfinite(values)
    if noise is None:
        return values[finite]
    kinds = [k for k in ("clean", "close-set", "open-set", "merged", "split") if (noise == k).any()]
    kinds += sorted(set(np.unique(noise).tolist()) - set(kinds))
    return {k: values[finite & (noise == k)] for k in kinds}


class _PurifyPages:
    """Builds the pages of one purify report (state shared between the page kinds)."""

    def __init__(self, writer: ReportWriter, thumbs: ThumbWriter, table: DecisionTable, summary: dict[str, Any], *,
                 noise: np.ndarray | None = None, max_thumbs: int, rows_per_page: int, silent: bool,
                 synthesised: dict[tuple[str, int], SubcenterImage] | None = None) -> None:
        self.writer, self.thumbs, self.table, self.summary, self.noise = writer, thumbs, table, summary, noise
        self.synthesised = synthesised or {}
        self.max_thumbs, self.rows_per_page, self.silent = max_thumbs, rows_per_page, silent
        self.stats = identity_stats(table)
        self.order = group_order(table)
        counts = np.bincount(table.identity, minlength=len(table.names))
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.code = {name: i for i, name in enumerate(table.names)}

    # -- helpers ------------------------------------------------------------------------
    def face(self, row: int, caption: str | None = None) -> Thumb:
        t = self.table
        return self.thumbs.thumb(int(t.index[row]), t.location[row], ACTIONS[int(t.action[row])], caption or _caption(t, row))

    def identity_link(self, name: str) -> dict[str, Any]:
        code = self.code.get(name)
        return {"name": name, "href": None if code is None else f"identities/{code}.html"}

    def rows_of(self, code: int) -> np.ndarray:
        """Rows of identity ``code`` in page order (dominant group first, by angle)."""
        return self.order[self.starts[code]:self.starts[code + 1]]

    def typical_faces(self, code: int, count: int, *, subcenter: int | None = None) -> list[Thumb]:
        """``count`` faces of an identity: its smallest angles (in one sub-center's group when given)."""
        rows = self.rows_of(code)
        if subcenter is not None:
            rows = rows[self.table.nearest[rows] == subcenter]
        return [self.face(int(r)) for r in rows[:count]]

    # -- identity pages -------------------------------------------------------------------
    def identity_pages(self) -> None:
        t, s = self.table, self.stats
        progress = make_progress(silent=self.silent)
        with progress:
            task = progress.add_task("identity pages", total=len(t.names))
            for code, name in enumerate(t.names):
                rows = self.rows_of(code)
                near = t.nearest[rows]
                cut = np.flatnonzero(np.diff(near)) + 1
                groups = np.split(rows, cut) if len(rows) else []
                shown = share_out([len(g) for g in groups], self.max_thumbs)
                dominant = int(t.dominant[rows[0]]) if len(rows) else -1
                sections = []
                for g, n_shown in zip(groups, shown):
                    sub = int(t.nearest[g[0]])
                    title = ("dominant sub-center" if sub == dominant else "sub-center") + f" {sub}" if sub >= 0 else "no sub-center (no usable embedding)"
                    picked = g[spread_evenly(len(g), n_shown)]
                    faces = Markup("").join(self.face(int(r)).html("../") for r in picked)
                    kept = int(np.isin(t.action[g], [ACTIONS.index(a) for a in ("drop", "dedup")], invert=True).sum())
                    image = self.synthesised.get((name, sub))
                    sections.append({"title": title, "size": len(g), "kept": kept, "faces": faces, "hidden": len(g) - len(picked),
                                     "synthesised": None if image is None else place(image, self.writer.stage)})
                actions = np.bincount(t.action[rows], minlength=len(ACTIONS))
                facts = " \u00b7 ".join([
                    f"{int(s.size[code]):,} images", f"{int(s.removed[code]):,} removed ({100 * s.removed_share[code]:.1f}%)",
                    f"angle spread (p90 - p10) {_deg(s.spread[code])}", f"median angle {_deg(s.median[code])}",
                    f"{int(s.subcenters[code])} sub-centers used",
                    ", ".join(f"{ACTION_LABELS[a]} {int(c):,}" for a, c in zip(ACTIONS, actions) if c) or "no images",
                ])
                nav = {"prev": f"{code - 1}.html" if code > 0 else None, "next": f"{code + 1}.html" if code + 1 < len(t.names) else None}
                self.writer.page(f"identities/{code}.html", "purify_identity.html", title=f"Identity {name}", facts=facts,
                                 sections=sections, nav=nav)
                progress.advance(task)

    # -- identity table -------------------------------------------------------------------
    def identity_tables(self) -> None:
        s = self.stats
        names = self.table.names
        spread = np.where(np.isfinite(s.spread), s.spread, -1.0)
        orders = {
            "dropped": np.lexsort((-s.size, -s.removed_share)),
            "size": np.lexsort((np.arange(len(names)), -s.size)),
            "spread": np.lexsort((-s.size, -spread)),
        }
        count = max(1, math.ceil(len(names) / self.rows_per_page))
        self.table_pages = count
        for key, order in orders.items():
            for p, chunk in pages_of(order, self.rows_per_page):
                rows = [(int(c), names[c], int(s.size[c]), int(s.removed[c]), float(s.removed_share[c]), float(s.spread[c]), float(s.median[c]),
                         int(s.subcenters[c])) for c in chunk]
                self.writer.page(f"pages/identities-{key}-{p}.html", "purify_identities.html", title=f"Identities by {SORT_KEYS[key][0]}",
                                 key=key, keys=SORT_KEYS, rows=rows, page=p, pages=count, total=len(names),
                                 pager=pager(f"pages/identities-{key}-{{}}.html", p, count), first=(p - 1) * self.rows_per_page)

    # -- candidate lists --------------------------------------------------------------------
    def candidate_lists(self) -> dict[str, dict[str, Any]]:
        """Write every list's pages; return per list its item count, first page and a preview."""
        builders: dict[str, tuple[Sequence[Any], int, Callable[[Any], dict[str, Any]]]] = {
            "merges": (_list(self.summary, "merges"), FACES_PER_MERGE * 2, self.merge_item),
            "relabels": (np.flatnonzero(self.table.action == ACTIONS.index("relabel")), 1, self.relabel_item),
            "splits": (_list(self.summary, "splits"), FACES_PER_SPLIT * 2, self.split_item),
            "duplicates": (_list(self.summary, "duplicates"), 2, self.duplicate_item),
            "outliers": (_list(self.summary, "outlier_groups"), FACES_PER_GROUP, self.outlier_item),
        }
        suspects, scored = self.most_suspect()
        notes = {}
        if scored:  # outputs written before the calibrated drop rule have no noise scores: no list
            builders["suspects"] = (suspects, 1, self.suspect_item)
            notes["suspects"] = (f"The {len(suspects):,} highest noise scores of {scored:,} scored images, highest first. The noise score is the "
                                 "calibrated probability that an image's label is wrong, from its angle to the mean of its identity's other images.")
        titles = {name: LISTS[name] for name in builders}
        out = {}
        for name, (items, faces_each, build) in builders.items():
            per_page = max(1, min(200, self.max_thumbs // faces_each))
            count = max(1, math.ceil(len(items) / per_page))
            preview: list[dict[str, Any]] = []
            for p, chunk in pages_of(items, per_page):
                built = [build(item) for item in chunk]
                if p == 1:
                    preview = built[:12 if name in ("relabels", "suspects") else 6]
                self.writer.page(f"pages/{name}-{p}.html", "purify_list.html", title=LISTS[name], kind=name, items=built, total=len(items),
                                 page=p, pages=count, pager=pager(f"pages/{name}-{{}}.html", p, count), lists=titles, note=notes.get(name, ""))
            out[name] = {"title": LISTS[name], "count": len(items), "href": f"pages/{name}-1.html", "preview": preview}
        return out

    def most_suspect(self) -> tuple[list[tuple[int, int]], int]:
        """(rank from 1, row) of the :data:`MOST_SUSPECT` highest noise scores (ties: larger angle, then row), and how many rows have a score."""
        t = self.table
        rows = np.flatnonzero(np.isfinite(t.noise_score))
        loo = np.nan_to_num(t.loo_angle[rows].astype(np.float64), nan=-1.0)
        ranked = rows[np.lexsort((rows, -loo, -t.noise_score[rows].astype(np.float64)))][:MOST_SUSPECT]
        return [(rank, int(r)) for rank, r in enumerate(ranked.tolist(), start=1)], len(rows)

    def suspect_item(self, item: tuple[int, int]) -> dict[str, Any]:
        rank, row = item
        t = self.table
        return {"rank": rank, "face": self.face(row), "identity": self.identity_link(t.names[int(t.identity[row])]),
                "score": float(t.noise_score[row]), "loo": _deg(t.loo_angle[row]), "action": ACTION_LABELS[ACTIONS[int(t.action[row])]],
                "noise": None if self.noise is None else str(self.noise[row])}

    def merge_item(self, item: dict[str, Any]) -> dict[str, Any]:
        members = []
        for name in item.get("identities") or []:
            code = self.code.get(str(name))
            faces = self.typical_faces(code, FACES_PER_MERGE) if code is not None else []
            size = int(self.stats.size[code]) if code is not None else None
            members.append({**self.identity_link(str(name)), "size": size, "faces": faces})
        if ("min_angle" in item or "max_angle" in item) and _deg(item.get("min_angle")) != _deg(item.get("max_angle")):
            angle = f"{_deg(item.get('min_angle'))} - {_deg(item.get('max_angle'))}"
        elif "min_angle" in item or "max_angle" in item:
            angle = _deg(item.get("min_angle", item.get("max_angle")))
        else:
            angle = _deg(item.get("angle"))
        return {"members": members, "angle": angle, "into": item.get("into"), "applied": item.get("merged", item.get("applied")),
                "similarity": _float(item.get("similarity")), "score": _float(item.get("score"))}

    def relabel_item(self, row: Any) -> dict[str, Any]:
        row = int(row)
        t = self.table
        new = t.new_names[int(t.new_identity[row])] if t.new_identity[row] >= 0 else ""
        return {"face": self.face(row), "from": self.identity_link(t.names[int(t.identity[row])]),
                "to": self.identity_link(new), "angle": _deg(t.angle[row])}

    def split_item(self, item: dict[str, Any]) -> dict[str, Any]:
        if isinstance(item.get("groups"), list):
            return self.calibrated_split_item(item)
        name = str(item.get("identity", ""))
        code = self.code.get(name)
        subs = list(item.get("subcenters") or [])
        shares = list(item.get("shares") or [])
        groups = []
        for k, sub in enumerate(subs):
            faces = self.typical_faces(code, FACES_PER_SPLIT, subcenter=int(sub)) if code is not None else []
            groups.append({"subcenter": sub, "share": shares[k] if k < len(shares) else None, "faces": faces})
        return {"identity": self.identity_link(name), "angle": _deg(item.get("angle")), "groups": groups, "applied": item.get("applied"),
                "similarity": None, "score": None}

    def calibrated_split_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """A split of the calibrated rule: each group's first faces by dataset index, its size, the similarity and the score."""
        sizes = list(item.get("sizes") or [])
        groups = []
        for k, members in enumerate(item["groups"]):
            rows = [self.table.row(int(i)) for i in (members if isinstance(members, list) else [])]
            faces = [self.face(r) for r in rows if r is not None][:FACES_PER_SPLIT]
            groups.append({"number": k + 1, "size": sizes[k] if k < len(sizes) else len(rows), "faces": faces})
        return {"identity": self.identity_link(str(item.get("identity", ""))), "angle": _deg(item.get("angle")), "groups": groups,
                "applied": item.get("applied"), "similarity": _float(item.get("similarity")), "score": _float(item.get("score")),
                "new_identity": item.get("new_identity")}

    def duplicate_item(self, item: dict[str, Any]) -> dict[str, Any]:
        sides = []
        for key in ("a", "b"):
            row = self.table.row(int(item[key])) if key in item else None
            if row is None:
                sides.append({"face": None, "identity": self.identity_link(str(item.get(f"{key}_identity", "?"))), "index": item.get(key)})
                continue
            sides.append({"face": self.face(row), "identity": self.identity_link(self.table.names[int(self.table.identity[row])]),
                          "index": int(item[key])})
        cos = item.get("cos")
        return {"sides": sides, "cos": f"{cos:.4f}" if isinstance(cos, (int, float)) else "-"}

    def outlier_item(self, item: dict[str, Any]) -> dict[str, Any]:
        members = item.get("first_indices") or item.get("members") or []
        faces = []
        for index in members[:FACES_PER_GROUP]:
            row = self.table.row(int(index))
            if row is not None:
                faces.append(self.face(row, caption=f"{self.table.names[int(self.table.identity[row])]} {_caption(self.table, row)}"))
        identities = [{**self.identity_link(str(n)), "count": c} for n, c in (item.get("identities") or {}).items()]
        return {"group": item.get("group"), "size": item.get("size", len(members)), "faces": faces,
                "identities": identities, "new_identity": item.get("new_identity")}

    # -- index ------------------------------------------------------------------------------
    def index(self, clean_dir: Path, lists: dict[str, dict[str, Any]], noise: np.ndarray | None, info: dict[str, Any]) -> None:
        sm, t = self.summary, self.table
        threshold = _float(sm.get("threshold"))
        advised = _float(sm.get("advised_threshold"))
        calibration = self.calibration_view(noise)
        actions = sm.get("actions") or {}
        action_rows = [(ACTION_LABELS.get(a, a), actions.get(a, 0), int((t.action == ACTIONS.index(a)).sum()) if a in ACTIONS else None)
                       for a in list(ACTIONS) + sorted(set(actions) - set(ACTIONS))]
        truth = sm.get("truth") or {}
        quality = []
        if truth.get("overall"):
            quality.append(("all flags (any action but keep)", truth["overall"]))
        if truth.get("angle_only"):
            quality.append(("angle above the angle-rule threshold only", truth["angle_only"]))
        per_type = [(k, v) for k, v in (truth.get("per_type") or {}).items()]
        worst = np.lexsort((-self.stats.size, -self.stats.removed_share))[:20]
        top = [(int(c), t.names[c], int(self.stats.size[c]), float(self.stats.removed_share[c]), float(self.stats.spread[c])) for c in worst]
        settings = sorted((str(k), json.dumps(v) if not isinstance(v, str) else v) for k, v in (sm.get("settings") or {}).items())
        faiss = sm.get("faiss") or {}
        cards = [
            ("images", sm.get("images_before"), sm.get("images_after")),
            ("identities", sm.get("identities_before"), sm.get("identities_after")),
        ]
        self.writer.finish(
            "purify_index.html", title=f"Purification of {info.get('data') or clean_dir.name}", clean_dir=info.get("out") or str(clean_dir), cards=cards,
            threshold=threshold, advised=advised, histogram=self.angle_histogram(noise, threshold, advised, calibration["used"]),
            calibration=calibration, action_rows=action_rows, reasons=sorted((sm.get("reasons") or {}).items()),
            quality=quality, per_type=per_type, top=top, lists=lists, keys=SORT_KEYS, settings=settings, faiss=sorted(faiss.items()),
            identities=len(t.names), images=len(t), legend=ACTION_LABELS, thumbs_failed=self.thumbs.failed,
            non_finite=int((~np.isfinite(t.angle)).sum()), noise=noise is not None, identity_calibration=identity_calibration_view(sm),
        )

    def angle_histogram(self, noise: np.ndarray | None, threshold: float | None, advised: float | None, calibrated: bool) -> Markup:
        """The histogram of the angles to the dominant sub-center; its solid line is the angle rule's threshold."""
        markers = {f"advised {advised:.1f}\u00b0": advised} if advised is not None else None
        name = "angle rule" if calibrated else "threshold"
        hist = svg.histogram(_by_noise_type(self.table.angle, noise), bins=72, value_range=(0.0, 180.0), marker=threshold,
                             marker_label=f"{name} {threshold:.1f}\u00b0" if threshold is not None else "", markers=markers,
                             title="Angle to the dominant sub-center" + (" by noise type" if noise is not None else ""),
                             x_label="angle (degrees)", width=760, height=300)
        return safe_svg(hist)

    def calibration_view(self, noise: np.ndarray | None) -> dict[str, Any]:
        """What the index shows of the drop rule: the rule, the calibration's numbers or why it fell back, the histogram of ``loo_angle``.

        ``threshold_label`` names the angle-rule threshold card: the threshold that dropped
        (angle rule, or the calibrated rule's fallback) or the unused fallback.
        """
        sm, t = self.summary, self.table
        cal = sm.get("calibration") if isinstance(sm.get("calibration"), dict) else {}
        rule = sm.get("drop_rule")
        used = bool(cal.get("used"))
        threshold = _float(cal.get("threshold", sm.get("calibrated_threshold"))) if used else None
        if used:
            label = "angle-rule threshold (fallback, not used)"
        elif rule == "calibrated":
            label = "angle threshold used (calibration fell back)"
        else:
            label = "angle threshold used (angle rule)"
        finite = np.isfinite(t.loo_angle)
        hist = None
        if finite.any():
            top = max(float(t.loo_angle[finite].max()), threshold or 0.0)
            hi = min(180.0, max(10.0, 10.0 * math.ceil(top / 10.0)))
            hist = safe_svg(svg.histogram(
                _by_noise_type(t.loo_angle, noise), bins=60, value_range=(0.0, hi), marker=threshold,
                marker_label=f"calibrated {threshold:.1f}\u00b0" if threshold is not None else "",
                title="Angle to the mean of the identity's other images" + (" by noise type" if noise is not None else ""),
                x_label="angle (degrees)", width=760, height=300))
        numbers = {k: _float(cal.get(k)) for k in ("noise_rate", "clean_mean", "clean_std", "impostor_median", "cut")}
        return {"rule": rule, "used": used, "reason": None if used else cal.get("reason"), "warning": cal.get("warning") if used else None,
                "threshold": threshold, "threshold_label": label,
                **numbers, "angles": cal.get("angles"), "impostors": cal.get("impostors"), "histogram": hist,
                "loo_images": int(finite.sum()), "scored": int(np.isfinite(t.noise_score).sum())}


IDENTITY_RULES = {  # rule -> (what its estimated share counts, its share's key, the rule it falls back to)
    "merge": ("identities whose nearest other identity is the same person", "same_person_rate", "angle rule"),
    "split": ("identities holding two people", "two_people_rate", "sub-center rule"),
}


def identity_calibration_view(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The calibrated merge and split rules of ``summary["identity_calibration"]``: used (and the estimated share) or why not.

    Empty for outputs written before those rules (or by the angle rules alone).
    """
    found = summary.get("identity_calibration")
    if not isinstance(found, dict):
        return []
    out = []
    for rule, (what, key, fallback) in IDENTITY_RULES.items():
        cal = found.get(rule)
        if not isinstance(cal, dict):
            continue
        used = bool(cal.get("used"))
        out.append({"rule": rule, "used": used, "what": what, "fallback": fallback, "reason": None if used else cal.get("reason"),
                    "rate": _float(cal.get(key, cal.get("noise_rate"))) if used else None, "count": cal.get("angles") if used else None,
                    "notes": [_sentence(str(cal[k])) for k in ("warning", "auto_merge_reason") if cal.get(k)]})
    return out


def _sentence(text: str) -> str:
    """``text`` with a capital first letter (a note that starts a sentence of the report)."""
    return text[:1].upper() + text[1:]


def _list(summary: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = summary.get(key) or []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _deg(value: Any) -> str:
    v = _float(value)
    return "-" if v is None else f"{v:.1f}\u00b0"
