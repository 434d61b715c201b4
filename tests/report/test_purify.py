"""The purify report: numbers, every page, every link, thumbnails and placeholders."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cleanface.errors import DataError
from cleanface.report.purify import render_purify_report

from .fixtures import broken_links, parse_page


def _text(page: Path) -> str:
    return " ".join(" ".join(parse_page(page).text).split())


def _rows(clean: Path) -> list[dict[str, str]]:
    with open(clean / "decisions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_counts_on_the_index_equal_the_summary(purify_dir):
    index = render_purify_report(purify_dir)
    summary = json.loads((purify_dir / "summary.json").read_text())
    text = _text(index)
    assert f"{summary['images_before']} \u2192 {summary['images_after']}" in text
    assert f"{summary['identities_before']} \u2192 {summary['identities_after']}" in text
    labels = {"keep": "kept", "drop": "dropped", "relabel": "relabelled", "merge": "merged", "dedup": "dedup", "new-identity": "new identity"}
    for action, count in summary["actions"].items():
        assert re.search(rf"{labels[action]} {count} {count}\b", text), action
    assert f"{summary['threshold']:.1f}\u00b0" in text and f"{summary['advised_threshold']:.1f}\u00b0" in text
    overall = summary["truth"]["overall"]
    assert f"{overall['precision']:.3f} {overall['recall']:.3f} {overall['f1']:.3f}" in text
    for title, key in (("Merge candidates", "merges"), ("Split candidates", "splits"), ("Near-duplicate pairs", "duplicates"), ("Outlier groups", "outlier_groups")):
        assert f"{title} ({len(summary[key])})" in text


def test_every_identity_has_a_page_and_every_link_resolves(purify_dir):
    index = render_purify_report(purify_dir)
    report = index.parent
    names = list(dict.fromkeys(r["old_identity"] for r in _rows(purify_dir)))
    for n, name in enumerate(names):
        page = report / "identities" / f"{n}.html"
        assert page.is_file()
        assert f"Identity {name}" in _text(page)
    assert not (report / "identities" / f"{len(names)}.html").exists()
    assert broken_links(report) == []
    for page in report.rglob("*.html"):
        html = page.read_text()
        assert "http://" not in html and "https://" not in html, page


def test_identity_page_groups_faces_by_subcenter_dominant_first_sorted_by_angle(purify_dir):
    report = render_purify_report(purify_dir).parent
    rows = [r for r in _rows(purify_dir) if r["old_identity"] == "alice"]
    html = (report / "identities" / "0.html").read_text()
    sections = re.split(r"<h3>", html)[1:]
    assert sections[0].startswith("dominant sub-center 0") and sections[1].startswith("sub-center 1")
    for section, sub in zip(sections, ("0", "1")):
        captions = re.findall(r">([\d.]+)\u00b0 ", section)
        expected = sorted((float(r["angle"]) for r in rows if r["nearest_subcenter"] == sub))
        assert [float(c) for c in captions] == pytest.approx([round(a, 1) for a in expected], abs=0.051)
    assert '<figure class="d">' in html and '<figure class="r">' in html and '<figure class="k">' in html
    assert "relabelled \u2192 bob" in html


def test_candidate_lists_show_both_sides(purify_dir):
    report = render_purify_report(purify_dir).parent
    merges = _text(report / "pages" / "merges-1.html")
    assert "bob" in merges and "dave" in merges and "dominant sub-centers: 20.5\u00b0" in merges
    dup = (report / "pages" / "duplicates-1.html").read_text()
    assert "thumbs/0/7.jpg" in dup and "thumbs/0/10.jpg" in dup and "0.9910" in dup
    relabels = _text(report / "pages" / "relabels-1.html")
    assert "alice bob" in relabels
    outliers = (report / "pages" / "outliers-1.html").read_text()
    assert "thumbs/0/5.jpg" in outliers and "thumbs/0/16.jpg" in outliers and "outlier-group-1" in outliers


def test_identity_table_pages_are_sorted_by_each_key(purify_dir):
    report = render_purify_report(purify_dir, rows_per_page=2).parent
    rows = _rows(purify_dir)
    sizes = {}
    for r in rows:
        sizes[r["old_identity"]] = sizes.get(r["old_identity"], 0) + 1
    listed = []
    for p in (1, 2):
        html = (report / "pages" / f"identities-size-{p}.html").read_text()
        listed += re.findall(r'identities/\d+\.html">([^<]+)</a>', html)
    assert [s for s in (sizes[n.replace("&#35;", "#")] for n in listed)] == sorted(sizes.values(), reverse=True)
    assert not (report / "pages" / "identities-size-3.html").exists()
    shares = []
    for p in (1, 2):
        shares += [float(x) for x in re.findall(r'<td>([\d.]+)%', (report / "pages" / f"identities-dropped-{p}.html").read_text())]
    assert shares == sorted(shares, reverse=True) and len(shares) == 4


def test_thumbnail_cap_shows_an_even_spread_and_says_how_many_are_hidden(purify_dir):
    report = render_purify_report(purify_dir, max_thumbs_per_page=3).parent
    html = (report / "identities" / "0.html").read_text()  # alice: 4 + 3 images
    assert html.count("<img") == 3
    assert "more images of this group are not shown" in html
    assert broken_links(report) == []


def test_stacked_histogram_by_noise_type_from_the_truth_file(purify_dir):
    html = render_purify_report(purify_dir).read_text()
    svg_text = html[html.index("<svg"):html.index("</svg>")]
    for kind in ("clean", "open-set", "close-set", "merged"):
        assert f">{kind}</text>" in svg_text
    assert "by noise type" in svg_text


def test_placeholders_read_and_write_no_image(purify_dir):
    report = render_purify_report(purify_dir, placeholder_thumbs=True).parent
    assert not (report / "thumbs").exists()
    pages = list(report.rglob("*.html"))
    assert all("<img" not in p.read_text() for p in pages)
    assert "<span></span>" in (report / "identities" / "0.html").read_text()
    assert broken_links(report) == []


def test_thumbnails_are_written_once_and_reused(purify_dir):
    report = render_purify_report(purify_dir).parent
    thumb = report / "thumbs" / "0" / "3.jpg"
    stamp = thumb.stat().st_mtime_ns
    thumb_bytes = thumb.read_bytes()
    render_purify_report(purify_dir)
    assert thumb.stat().st_mtime_ns == stamp and thumb.read_bytes() == thumb_bytes
    from PIL import Image

    with Image.open(thumb) as image:
        assert image.format == "JPEG" and max(image.size) <= 64


def test_unreadable_image_becomes_a_captioned_box(purify_dir):
    first = Path(_rows(purify_dir)[0]["location"])
    first.write_bytes(b"not an image")
    html = (render_purify_report(purify_dir).parent / "identities" / "0.html").read_text()
    assert "(unreadable)" in html


def test_recordio_images_link_to_full_size_copies(tmp_path, purify_dir):
    from cleanface.data.open import open_dataset, write_dataset

    rec_dir = write_dataset(open_dataset(tmp_path / "noisy"), tmp_path / "rec", "rec")
    rec = open_dataset(rec_dir)
    rows = _rows(purify_dir)
    by_identity: dict[str, list[int]] = {}
    for i in range(len(rec)):
        by_identity.setdefault(rec.names[int(rec.labels[i])], []).append(i)
    taken: dict[str, int] = {}
    for r in rows:  # same images in the same per-identity order
        k = taken[r["old_identity"]] = taken.get(r["old_identity"], -1) + 1
        r["location"] = rec.location(by_identity[r["old_identity"]][k])
    with open(purify_dir / "decisions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    report = render_purify_report(purify_dir).parent
    copies = list((report / "images").rglob("*.png"))
    assert len(copies) == len(rows)
    html = (report / "identities" / "0.html").read_text()
    assert 'href="../images/0/0.png"' in html
    assert broken_links(report) == []


def test_missing_inputs_are_one_line_errors(tmp_path, purify_dir):
    with pytest.raises(DataError, match="does not exist"):
        render_purify_report(tmp_path / "nowhere")
    (purify_dir / "decisions.csv").write_text("index,location\n0,x\n")
    with pytest.raises(DataError, match="lacks the column"):
        render_purify_report(purify_dir)


def test_summary_without_candidate_lists_is_tolerated(purify_dir):
    summary = json.loads((purify_dir / "summary.json").read_text())
    for key in ("merges", "splits", "duplicates", "outlier_groups", "truth", "advised_threshold"):
        summary.pop(key)
    (purify_dir / "summary.json").write_text(json.dumps(summary))
    index = render_purify_report(purify_dir)
    text = _text(index)
    assert "Merge candidates (0)" in text and "Relabel moves (1)" in text
    assert "by noise type" not in index.read_text()
    assert broken_links(index.parent) == []


def test_images_are_read_from_the_given_dataset_by_sample_index(tmp_path, purify_dir):
    rows = _rows(purify_dir)
    for r in rows:
        r["location"] = "moved-away/" + Path(r["location"]).name
    with open(purify_dir / "decisions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    report = render_purify_report(purify_dir, data=tmp_path / "noisy").parent
    html = (report / "identities" / "1.html").read_text()  # bob: samples 7..12
    assert 'src="../thumbs/0/7.jpg"' in html and 'href="../../../noisy/bob/000.png"' in html
    assert "(unreadable)" not in html
    assert broken_links(report) == []


# -- the calibrated drop rule ---------------------------------------------------------------


def _scored(clean: Path) -> list[dict[str, str]]:
    """Rows with a noise score, most suspect first (score, then leave-one-out angle, descending)."""
    rows = [r for r in _rows(clean) if r["noise_score"] != ""]
    return sorted(rows, key=lambda r: (-float(r["noise_score"]), -float(r["loo_angle"]), int(r["index"])))


def _svg_titled(html: str, title: str) -> str:
    start = html.index(title)
    return html[html.rindex("<svg", 0, start):html.index("</svg>", start)]


def test_calibrated_rule_shows_its_cards_sentence_and_histogram(calibrated_purify_dir):
    index = render_purify_report(calibrated_purify_dir)
    text, html = _text(index), index.read_text()
    assert "drop rule calibrated" in text
    assert "drop threshold (calibrated) 56.5\u00b0" in text and "estimated noise 28.6%" in text
    assert "angle-rule threshold (fallback, not used) 65.0\u00b0" in text
    assert "more typical of such an impostor pairing than of its own identity" in text and "No ground truth is used" in text
    assert "clean angles 31.2\u00b0 \u00b1 8.4\u00b0" in text and "(21 angles, 44 impostor angles)" in text
    loo = _svg_titled(html, "Angle to the mean of the identity&#x27;s other images by noise type")
    assert "calibrated 56.5\u00b0" in loo
    for kind in ("clean", "open-set", "close-set", "merged"):
        assert f">{kind}</text>" in loo
    finite = [r for r in _rows(calibrated_purify_dir) if r["loo_angle"] != ""]
    assert sum(int(n) for n in re.findall(r": (\d+)</title></rect>", loo)) == len(finite)  # every loo_angle drawn once
    old = _svg_titled(html, "Angle to the dominant sub-center by noise type")
    assert "angle rule 65.0\u00b0" in old and "calibrated" not in old
    assert f"{len(finite)} images with a leave-one-out angle, {len(_scored(calibrated_purify_dir))} with a noise score" in text
    preview = re.findall(r'thumbs/0/(\d+)\.jpg', html.split("Most suspect images <span")[1])
    assert [int(i) for i in preview] == [int(r["index"]) for r in _scored(calibrated_purify_dir)[:12]] and "All 21 \u2192" in text
    assert broken_links(index.parent) == []


def test_calibrated_rule_that_reached_no_threshold_says_so(calibrated_purify_dir):
    summary = json.loads((calibrated_purify_dir / "summary.json").read_text())
    summary["calibration"]["threshold"] = summary["calibrated_threshold"] = None
    (calibrated_purify_dir / "summary.json").write_text(json.dumps(summary))
    index = render_purify_report(calibrated_purify_dir)
    text = _text(index)
    assert "drop threshold (calibrated) none reached" in text and "no angle reached it, so this rule dropped nothing" in text
    assert "calibrated 56.5" not in index.read_text()


def test_most_suspect_list_ranks_images_by_noise_score(calibrated_purify_dir):
    report = render_purify_report(calibrated_purify_dir, max_thumbs_per_page=5).parent
    expected = _scored(calibrated_purify_dir)
    assert len(expected) == 21  # 22 images, one without an embedding
    shown, scores, ranks = [], [], []
    for p in (1, 2, 3, 4, 5):  # 5 faces a page
        html = (report / "pages" / f"suspects-{p}.html").read_text()
        shown += [int(i) for i in re.findall(r'thumbs/0/(\d+)\.jpg', html)]
        scores += [float(s) for s in re.findall(r'<td class="n">([01]\.\d{4})<td', html)]
        ranks += [int(n) for n in re.findall(r'<tr><td class="n">(\d+)<td>', html)]
    assert not (report / "pages" / "suspects-6.html").exists()
    assert shown == [int(r["index"]) for r in expected]
    assert scores == pytest.approx([float(r["noise_score"]) for r in expected], abs=5e-5) and scores == sorted(scores, reverse=True)
    assert ranks == list(range(1, 22))
    first = (report / "pages" / "suspects-1.html").read_text()
    assert f"noise {float(expected[0]['noise_score']):.2f}</figure>" in first  # the caption carries the score
    assert "The 21 highest noise scores of 21 scored images" in _text(report / "pages" / "suspects-1.html")
    index = report / "index.html"
    assert "Most suspect images (21)" in _text(index)
    preview = [int(i) for i in re.findall(r'thumbs/0/(\d+)\.jpg', index.read_text().split("Most suspect images <span")[1])]
    assert preview == [int(r["index"]) for r in expected[:5]]  # the preview is the head of the first page
    assert broken_links(report) == []


def test_most_suspect_list_is_capped(calibrated_purify_dir, monkeypatch):
    from cleanface.report import purify as purify_report

    monkeypatch.setattr(purify_report, "MOST_SUSPECT", 3)
    report = render_purify_report(calibrated_purify_dir).parent
    html = (report / "pages" / "suspects-1.html").read_text()
    assert [int(i) for i in re.findall(r'thumbs/0/(\d+)\.jpg', html)] == [int(r["index"]) for r in _scored(calibrated_purify_dir)[:3]]
    assert "The 3 highest noise scores of 21 scored images" in _text(report / "pages" / "suspects-1.html")


def test_captions_show_the_noise_score_when_there_is_one(calibrated_purify_dir):
    report = render_purify_report(calibrated_purify_dir).parent
    rows = _rows(calibrated_purify_dir)
    bob = (report / "identities" / "1.html").read_text()  # bob: samples 7..12, sample 12 without an angle or score
    for r in rows[7:12]:
        assert f"{float(r['angle']):.1f}\u00b0 " in bob and f" noise {float(r['noise_score']):.2f}</figure>" in bob
    assert "no angle kept</figure>" in bob
    relabel = next(r for r in rows if r["action"] == "relabel")
    assert f"relabelled \u2192 bob noise {float(relabel['noise_score']):.2f}" in (report / "identities" / "0.html").read_text()


def test_fallen_back_calibration_shows_its_reason_and_no_scores(tmp_path):
    from .fixtures import FALLBACK_REASON, make_purify_dir

    clean = make_purify_dir(tmp_path, calibration="fallback")
    index = render_purify_report(clean)
    text, html = _text(index), index.read_text()
    assert f"The calibrated drop rule fell back to the angle rule: {FALLBACK_REASON}." in text
    assert "drop rule calibrated \u2192 angle" in text and "angle threshold used (calibration fell back) 65.0\u00b0" in text
    assert "drop threshold (calibrated)" not in text and "estimated noise" not in text
    loo = _svg_titled(html, "Angle to the mean of the identity&#x27;s other images")
    assert "calibrated" not in loo  # no threshold to mark
    assert "Most suspect images" not in html and not (index.parent / "pages" / "suspects-1.html").exists()
    assert broken_links(index.parent) == []


def test_old_decisions_without_scores_render_without_the_calibrated_parts(purify_dir):
    from cleanface.report.decisions_table import read_decisions

    table = read_decisions(purify_dir / "decisions.csv")
    assert table.noise_score.shape == table.loo_angle.shape == (len(table),) and len(table) == 22
    assert np.isnan(table.noise_score).all() and np.isnan(table.loo_angle).all()
    report = render_purify_report(purify_dir).parent
    text, html = _text(report / "index.html"), (report / "index.html").read_text()
    assert "angle threshold used (angle rule) 65.0\u00b0" in text and "threshold 65.0\u00b0" in html
    for absent in ("drop rule", "drop threshold (calibrated)", "estimated noise", "Calibrated drop rule",
                   "other images", "Most suspect images"):
        assert absent not in text, absent
    assert not (report / "pages" / "suspects-1.html").exists()
    assert all(" noise " not in page.read_text() for page in (report / "identities").iterdir())
    assert broken_links(report) == []


def test_decisions_with_scores_are_read_and_bad_scores_are_one_line_errors(calibrated_purify_dir):
    from cleanface.errors import DataError
    from cleanface.report.decisions_table import read_decisions

    rows = _rows(calibrated_purify_dir)
    table = read_decisions(calibrated_purify_dir / "decisions.csv")
    for r, score, loo in zip(rows, table.noise_score, table.loo_angle):
        assert (np.isnan(score) if r["noise_score"] == "" else score == pytest.approx(float(r["noise_score"]), abs=1e-6))
        assert (np.isnan(loo) if r["loo_angle"] == "" else loo == pytest.approx(float(r["loo_angle"]), abs=1e-4))
    rows[3]["noise_score"] = "high"
    with open(calibrated_purify_dir / "decisions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match="line 5: unreadable .*noise score"):
        read_decisions(calibrated_purify_dir / "decisions.csv")


def test_a_calibration_that_warns_says_so_on_the_index(calibrated_purify_dir):
    quiet = render_purify_report(calibrated_purify_dir).read_text()
    assert "Warning:" not in quiet
    path = calibrated_purify_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary["calibration"]["warning"] = "77% of the images look like impostors: review the most suspect list"
    path.write_text(json.dumps(summary))
    loud = render_purify_report(calibrated_purify_dir).read_text()
    assert "<b>Warning:</b> 77% of the images look like impostors" in loud
