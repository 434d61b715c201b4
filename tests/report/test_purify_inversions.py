"""Synthesised sub-center faces on the identity pages of the purify report (cleanface/report/inversions.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleanface._atomic import mark_complete
from cleanface.errors import DataError
from cleanface.report.inversions import read_inversions
from cleanface.report.purify import render_purify_report

from .fixtures import broken_links, parse_page


def write_inversion_folder(folder: Path, faces: dict[tuple[str, int], tuple[int, float]], *, complete: bool = True) -> Path:
    """An inversion folder as ``cleanface invert --sub-centers`` writes it: (identity, k) -> (grey level, cosine)."""
    items = []
    for (name, k), (grey, cos) in faces.items():
        rel = f"{name.replace(' ', '_').replace('#', '_')}/subcenter_{k}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), grey, np.uint8)).save(folder / rel)
        items.append({"file": rel, "target": "subcenter", "identity": name, "label": 0, "subcenter": k, "dominant": k == 0, "votes": 1,
                      "row": None, "cos": cos})
    (folder / "inversion.json").write_text(json.dumps({"kind": "subcenters", "items": items}))
    if complete:
        mark_complete(folder)
    return folder


def _names(clean: Path) -> list[str]:
    with open(clean / "decisions.csv", newline="") as handle:
        return list(dict.fromkeys(r["old_identity"] for r in csv.DictReader(handle)))


def test_identity_pages_show_each_subcenters_face(purify_dir):
    names = _names(purify_dir)
    faces = {(names[0], 0): (40, 0.91), (names[0], 1): (200, 0.83)}
    write_inversion_folder(purify_dir / "inversions", faces)  # found without being named
    report = render_purify_report(purify_dir).parent
    page = parse_page(report / "identities" / "0.html")
    shown = [src for src in page.links if "inversions/" in src]
    assert len(shown) == 2, page.links
    for (name, k), (grey, cos) in faces.items():
        src = next(s for s in shown if s.endswith(f"subcenter_{k}.png"))
        copy = (report / "identities" / src).resolve()
        assert copy.is_relative_to(report.resolve()) and np.asarray(Image.open(copy))[0, 0, 0] == grey
        assert f"cos {cos:.2f}" in (report / "identities" / "0.html").read_text()
    # identities without inversions show none, and every link resolves
    assert not [s for s in parse_page(report / "identities" / "1.html").links if "inversions/" in s]
    assert broken_links(report) == []


def test_a_named_folder_is_used_and_without_one_nothing_is_shown(purify_dir, tmp_path):
    names = _names(purify_dir)
    folder = write_inversion_folder(tmp_path / "elsewhere", {(names[1], 0): (90, 0.7)})
    report = render_purify_report(purify_dir, inversions=folder).parent
    assert [s for s in parse_page(report / "identities" / "1.html").links if "inversions/" in s]
    report = render_purify_report(purify_dir).parent  # no default folder: no synthesised faces
    assert not any("inversions/" in s for p in (report / "identities").glob("*.html") for s in parse_page(p).links)


def test_bad_inversion_folders_are_named(purify_dir, tmp_path):
    names = _names(purify_dir)
    with pytest.raises(DataError, match="holds no inversion.json"):
        read_inversions(tmp_path)
    unfinished = write_inversion_folder(tmp_path / "unfinished", {(names[0], 0): (1, 0.5)}, complete=False)
    with pytest.raises(DataError, match="unfinished inversion"):
        render_purify_report(purify_dir, inversions=unfinished)
    gone = write_inversion_folder(tmp_path / "gone", {(names[0], 0): (1, 0.5)})
    next(gone.rglob("*.png")).unlink()
    with pytest.raises(DataError, match="which is not a file inside"):
        read_inversions(gone)
    outside = write_inversion_folder(tmp_path / "outside", {(names[0], 0): (1, 0.5)})
    manifest = json.loads((outside / "inversion.json").read_text())
    manifest["items"][0]["file"] = "../gone/inversion.json"
    (outside / "inversion.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="which is not a file inside"):
        read_inversions(outside)
    (outside / "inversion.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a cleanface inversion manifest"):
        read_inversions(outside)
