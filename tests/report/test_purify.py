"""The purify report: numbers, every page, every link, thumbnails and placeholders."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

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
