"""The purify report of the calibrated merge and split rules: scores in place of angles, each split group's faces, the calibration."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cleanface.report.purify import render_purify_report

from .fixtures import broken_links, make_purify_dir, parse_page

SPLIT_REASON = "too few identities with two well-filled groups to calibrate; split by the sub-center rule (60 degrees) instead"
CALIBRATED_MERGE = {"identities": ["bob", "dave"], "into": "bob", "similarity": 0.9731, "score": 0.9412, "min_angle": 13.3,
                    "max_angle": 13.3, "merged": True}
CALIBRATED_SPLIT = {"identity": "alice", "sizes": [4, 3], "similarity": 0.4102, "angle": 65.78, "score": 0.8765,
                    "groups": [[0, 1, 2, 3], [4, 5, 6]], "applied": True, "new_identity": "alice#2"}
OLD_SPLIT = {"identity": "carol #1", "subcenters": [0, 1], "shares": [0.6, 0.4], "angle": 71.2, "applied": False}


def _text(page: Path) -> str:
    return " ".join(" ".join(parse_page(page).text).split())


def _calibrated(tmp_path: Path, *, split_used: bool = False) -> Path:
    clean = make_purify_dir(tmp_path, calibration="used")
    summary = json.loads((clean / "summary.json").read_text())
    summary["merges"] = [CALIBRATED_MERGE]
    summary["splits"] = [CALIBRATED_SPLIT, OLD_SPLIT]
    split = {"used": True, "two_people_rate": 0.05, "noise_rate": 0.05, "angles": 4} if split_used else {"used": False, "reason": SPLIT_REASON}
    summary["identity_calibration"] = {"merge": {"used": True, "same_person_rate": 0.0312, "noise_rate": 0.0312, "angles": 40,
                                                 "impostors": 40, "threshold": 160.0, "cut": 0.5}, "split": split}
    (clean / "summary.json").write_text(json.dumps(summary))
    return clean


def test_a_calibrated_merge_shows_its_similarity_and_score(tmp_path):
    report = render_purify_report(_calibrated(tmp_path)).parent
    merges = _text(report / "pages" / "merges-1.html")
    assert "similarity q : 0.9731" in merges and "score (probability of one person): 0.9412" in merges
    assert "dominant sub-centers" not in merges and "into: bob" in merges and "merged" in merges
    assert "score (probability of one person): 0.9412" in _text(report / "index.html")  # the preview on the index


def test_an_angle_merge_keeps_its_angle_text(purify_dir):
    merges = _text(render_purify_report(purify_dir).parent / "pages" / "merges-1.html")
    assert "angle between dominant sub-centers: 20.5\u00b0" in merges and "score" not in merges


def test_a_calibrated_split_shows_each_group_by_sample_index(tmp_path):
    report = render_purify_report(_calibrated(tmp_path)).parent
    html = (report / "pages" / "splits-1.html").read_text()
    calibrated, old = html.split('<div class="pair">')[1:3]
    groups = calibrated.split("group ")[1:]
    assert [re.match(r"(\d) \((\d+) images\)", g).groups() for g in groups] == [("1", "4"), ("2", "3")]
    assert [re.findall(r"thumbs/0/(\d+)\.jpg", g) for g in groups] == [["0", "1", "2", "3"], ["4", "5", "6"]]
    text = _text(report / "pages" / "splits-1.html")
    assert "similarity q of its two groups: 0.4102" in text and "score (probability of two people): 0.8765" in text
    assert "new identity: alice#2" in text
    # a split of the sub-center rule renders as before, beside it
    assert "angle between the sub-centers:" in old and "71.2\u00b0" in old and "sub-center 0 (60.0%)" in old and "score" not in old
    assert broken_links(report) == []


def test_the_index_shows_the_identity_calibration(tmp_path):
    text = _text(render_purify_report(_calibrated(tmp_path)))
    assert "merge rule calibrated estimated identities whose nearest other identity is the same person: 3.1%" in text
    assert "split rule sub-center rule (fallback)" in text
    assert "Merge rule: calibrated on 40 identities; estimated share of identities whose nearest other identity is the same person: 3.1%" in text
    assert f"Split rule: not calibrated: {SPLIT_REASON}." in text


def test_a_used_split_calibration_shows_its_share(tmp_path):
    text = _text(render_purify_report(_calibrated(tmp_path, split_used=True)))
    assert "split rule calibrated estimated identities holding two people: 5.0%" in text
    assert "Split rule: calibrated on 4 identities; estimated share of identities holding two people: 5.0%" in text


def test_outputs_without_identity_calibration_show_none(purify_dir):
    text = _text(render_purify_report(purify_dir))
    assert "merge rule" not in text.lower() and "split rule" not in text.lower()


def test_identity_calibration_view_carries_the_warning_and_why_nothing_was_merged():
    from cleanface.report.purify import identity_calibration_view

    view = identity_calibration_view({"identity_calibration": {"merge": {
        "used": True, "same_person_rate": 0.4, "angles": 90, "warning": "40% of the identities look alike",
        "auto_merge": False, "auto_merge_reason": "the embeddings come from a model trained on these labels"}}})
    assert view[0]["notes"] == ["40% of the identities look alike", "The embeddings come from a model trained on these labels"]
