"""The overlap report, from a real overlap output: cards, calibration, shared identities face beside face, shared images, links."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cleanface.errors import DataError
from cleanface.report.overlap import render_overlap_report
from cleanface_cli.main import cli
from tests.purify.test_overlap_runner import COMMON, COPIED, PEOPLE, PER, make_sets, sets_with_embeddings, write_csv_embeddings

from .fixtures import broken_links, parse_page

overlap_runner = pytest.importorskip("cleanface.purify.overlap_runner")


def _text(page: Path) -> str:
    return " ".join(" ".join(parse_page(page).text).split())


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return sets_with_embeddings(tmp_path_factory.mktemp("overlap-report"))


@pytest.fixture()
def out(sets, tmp_path) -> Path:
    return overlap_runner.overlap(sets.a, sets.b, tmp_path / "out", embeddings_a=sets.emb_a, embeddings_b=sets.emb_b, silent=True)


def _identities(out: Path) -> list[dict[str, str]]:
    with open(out / "identities.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_page_holds_the_counts_the_shared_identities_and_their_scores(out):
    index = render_overlap_report(out)
    assert index == out / "report" / "index.html"
    text = _text(index)
    summary = json.loads((out / "summary.json").read_text())
    assert f"identities of A shared with B {COMMON}" in text and f"images of A found in B 1 of {PEOPLE * PER}" in text
    assert f"estimated share of A's identities in B {100 * summary['calibration']['shared_rate']:.1f}%" in text
    shared = [r for r in _identities(out) if r["shared"] == "true"]
    blocks = index.read_text().split('<div class="pair">')[1:]
    for row, block in zip(shared, blocks):  # best score first, as in identities.csv
        block_text = " ".join(re.sub(r"<[^>]+>", " ", block).split())
        assert f"A: {row['identity_a']} ({PER} images)" in block_text and f"B: {row['identity_b']} ({PER} images)" in block_text
        assert f"similarity q : {float(row['similarity']):.4f}" in block_text and f"score: {float(row['score']):.4f}" in block_text
    assert "reached from q \u2265" in text and "No ground truth is used" in text
    assert broken_links(index.parent) == []
    html = index.read_text()
    assert "http://" not in html and "https://" not in html


def test_faces_of_a_and_of_b_are_their_own_images(out, sets):
    """B's thumbnails are keyed after A's: the face shown for B's image is B's image, not A's image of the same index."""
    report = render_overlap_report(out).parent
    html = (report / "index.html").read_text()
    pair = html.split("Images of A also in B")[1]
    a_src, b_src = re.findall(r'<img src="(thumbs/[^"]+)"', pair)[:2]
    assert a_src == "thumbs/0/3.jpg" and b_src == "thumbs/1/1000.jpg"
    first = html.split('<div class="pair">')[1]
    srcs = re.findall(r'<img src="(thumbs/[^"]+)"', first)
    assert len(srcs) == 8 and all(s.startswith("thumbs/0/") for s in srcs[:4]) and all(s.startswith("thumbs/1/") for s in srcs[4:])

    def colour(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))

    b_index = int(srcs[4].split("/")[-1].split(".")[0]) - 1000
    from cleanface.data.open import open_dataset

    b_path = sets.b / open_dataset(sets.b, silent=True).paths[b_index]
    assert np.abs(colour(report / srcs[4]) - colour(b_path)).max() < 6
    assert np.abs(colour(report / "thumbs/1/1000.jpg") - colour(sets.b / COPIED[1])).max() < 6


def test_the_lists_are_capped_with_a_note(out):
    text = _text(render_overlap_report(out, max_identities=2, max_pairs=1))
    assert f"The first 2 of {COMMON} are shown; identities.csv lists every identity of A." in text
    assert (out / "report" / "index.html").read_text().count('<div class="pair">') == 3  # 2 identities + 1 image pair


def test_placeholders_read_no_image(out):
    report = render_overlap_report(out, placeholder_thumbs=True).parent
    assert not (report / "thumbs").exists() and broken_links(report) == []


def test_a_moved_dataset_leaves_its_faces_out_with_a_note(out, sets, tmp_path):
    summary = json.loads((out / "summary.json").read_text())
    summary["inputs"]["data_b"] = str(tmp_path / "gone")
    (out / "summary.json").write_text(json.dumps(summary))
    index = render_overlap_report(out)
    text = _text(index)
    assert "dataset B" in text and "could not be opened" in text
    first = index.read_text().split('<div class="pair">')[1]
    assert len(re.findall(r"<img ", first)) == 4  # A's faces only


def test_an_uncalibrated_overlap_says_why(tmp_path):
    small = make_sets(tmp_path / "small", people_count=6, per=4)
    emb_a = write_csv_embeddings(tmp_path / "a.csv", small.vectors["a"])
    emb_b = write_csv_embeddings(tmp_path / "b.csv", small.vectors["b"])
    out = overlap_runner.overlap(small.a, small.b, tmp_path / "out", embeddings_a=emb_a, embeddings_b=emb_b, silent=True)
    text = _text(render_overlap_report(out))
    assert "Not calibrated: too few identities" in text and "Identities of A shared with B (0) " in text


def test_missing_inputs_are_one_line_errors(out, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        render_overlap_report(tmp_path / "nope")
    (out / "identities.csv").unlink()
    with pytest.raises(DataError) as exc:
        render_overlap_report(out)
    assert "cannot read" in str(exc.value) and "\n" not in str(exc.value)
    (out / "identities.csv").write_text("identity_a,score\n")
    with pytest.raises(DataError, match="lacks the column"):
        render_overlap_report(out)


def test_cleanface_report_renders_an_overlap_directory(out):
    shutil.rmtree(out / "report", ignore_errors=True)
    result = CliRunner().invoke(cli, ["report", str(out), "--placeholders"])
    assert result.exit_code == 0, result.output
    assert "overlap report" in result.output and (out / "report" / "index.html").is_file() and not (out / "report" / "thumbs").exists()
    result = CliRunner().invoke(cli, ["report", str(out), "--data", str(out)])
    assert result.exit_code == 2 and "--data and --inversions apply to purify output directories only" in result.output


@pytest.mark.browser
def test_the_page_opens_from_file_without_a_request_or_an_error(out):
    from . import browser

    if browser.find_chromium() is None:
        pytest.skip("Chromium is not installed")
    index = render_overlap_report(out)
    load = browser.load_page(index)
    assert load.console_errors == [] and load.failed == []
    assert load.requests and all(r.startswith("file:") for r in load.requests)
    faces = set(re.findall(r'<img src="(thumbs/[^"]+)"', index.read_text()))
    assert len(faces) >= 8 * COMMON and {r.split("/report/", 1)[1] for r in load.requests if "/thumbs/" in r} == faces
