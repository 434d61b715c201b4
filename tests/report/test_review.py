"""The review page: its data files, the queues and their order, thumbnails, the CLI, and the page in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from . import browser
from .fixtures import make_purify_dir
from cleanface.errors import DataError
from cleanface.report.review import file_sha256, read_data_js, render_review
from cleanface_cli.main import cli
from cleanface_cli.review_cmds import COMMANDS


def _review_dir(tmp: Path) -> Path:
    """The calibrated fixture, plus: a suspect (a kept image with a high noise score), calibrated merges and splits to rank."""
    clean = make_purify_dir(tmp, calibration="used")
    lines = (clean / "decisions.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = {c: header.index(c) for c in header}
    for n, line in enumerate(lines[1:], start=1):
        cells = line.split(",")
        if cells[col["index"]] in ("13", "14"):  # carol #1's first two images: kept, yet suspect
            cells[col["noise_score"]] = "0.35" if cells[col["index"]] == "13" else "0.71"
            lines[n] = ",".join(cells)
    (clean / "decisions.csv").write_text("\n".join(lines) + "\n")
    summary = json.loads((clean / "summary.json").read_text())
    summary["merges"] = [
        {"identities": ["dave", "bob"], "into": "bob", "similarity": 0.61, "score": 0.62, "min_angle": 20.5, "max_angle": 22.0, "merged": True},
        {"identities": ["carol #1", "alice"], "into": "alice", "similarity": 0.7, "score": 0.91, "min_angle": 18.0, "max_angle": 18.0, "merged": False},
    ]
    summary["splits"] = [
        summary["splits"][0],  # the sub-center rule's (no score): after the calibrated one
        {"identity": "carol #1", "sizes": [3, 2], "similarity": 0.2, "angle": 78.0, "score": 0.88, "groups": [[13, 14, 15], [16, 17]],
         "applied": False},
    ]
    summary["duplicates"] += [{"a": 0, "b": 1, "cos": 0.999, "a_identity": "alice", "b_identity": "alice"},
                              {"a": 2, "b": 999, "cos": 0.995}]  # 999 is not in decisions.csv: no card
    (clean / "summary.json").write_text(json.dumps(summary))
    return clean


@pytest.fixture()
def review_clean(tmp_path: Path) -> Path:
    return _review_dir(tmp_path)


def _chunks(review: Path, queue: str) -> list[dict[str, Any]]:
    cards = []
    for n in range(1000):
        path = review / "data" / f"{queue}-{n}.js"
        if not path.is_file():
            break
        function, (name, number, chunk) = read_data_js(path)
        assert (function, name, number) == ("chunk", queue, n)
        assert path.read_text().startswith(f'CF_REVIEW.chunk("{queue}",{n},[')
        cards += chunk
    return cards


def test_render_writes_the_page_and_its_data(review_clean):
    index = render_review(review_clean)
    review = index.parent
    assert index == review_clean / "review" / "index.html"
    for name in ("index.html", "review.js", "review.css", "data/meta.js", "data/names.js"):
        assert (review / name).is_file(), name
    html = index.read_text()
    assert '<script src="review.js"></script>' in html and '<script src="data/meta.js"></script>' in html
    for hook in ('id="progress"', 'id="reviewer"', 'id="undo"', 'id="export"', 'id="prev-page"', 'id="next-page"', 'id="move-input"',
                 'id="move-results"', 'data-queue="drops"', 'data-queue="duplicates"'):
        assert hook in html, hook
    function, (meta,) = read_data_js(review / "data" / "meta.js")
    assert function == "meta"
    assert meta["id"] == file_sha256(review_clean / "decisions.csv") and len(meta["id"]) == 64
    assert meta["clean"] == str(review_clean.resolve()) and meta["images"] == 22 and meta["identities"] == 4 and meta["chunk_size"] == 50
    assert [(q["key"], q["kind"], q["count"], q["chunks"]) for q in meta["queues"]] == [
        ("drops", "image", 2, 1), ("suspects", "image", 2, 1), ("relabels", "image", 1, 1), ("merges", "merge", 2, 1),
        ("splits", "split", 2, 1), ("duplicates", "duplicate", 2, 1)]
    # distinct keys: i21 i5 | i14 i13 | i6 | two merges | two splits | i10 i1
    assert meta["total"] == 11
    function, (names,) = read_data_js(review / "data" / "names.js")
    assert function == "names" and names == sorted(names)
    assert {"alice", "bob", "carol #1", "dave", "outlier-group-1", "alice#2", "carol #1#2"} == set(names)


def test_queues_hold_the_expected_cards_in_rank_order(review_clean):
    review = render_review(review_clean).parent
    drops = _chunks(review, "drops")
    assert [c["k"] for c in drops] == ["i21", "i5"]  # lowest noise score first
    assert drops[0]["s"] < drops[1]["s"]
    first = drops[0]
    assert first["x"] == 21 and first["id"] == "dave" and first["a"] == "drop" and first["l"].endswith("dave/003.png")
    assert first["r"] == "angle above threshold" and first["t"] == "thumbs/0/21.jpg" and first["h"].endswith("dave/003.png")
    assert [c["k"] for c in _chunks(review, "suspects")] == ["i14", "i13"]  # highest noise score first
    assert sorted(f["x"] for f in first["ref"]) == [18, 19, 20]  # dave's kept images to compare with, not the dropped one itself
    relabel, = _chunks(review, "relabels")
    assert relabel["k"] == "i6" and relabel["a"] == "relabel" and relabel["n"] == "bob"
    assert len(relabel["ref"]) == 4 and 6 not in [f["x"] for f in relabel["ref"]]  # alice's kept faces, without the image
    assert {f["x"] for f in relabel["nref"]} <= {7, 8, 9, 10, 12} and len(relabel["nref"]) == 4  # bob's kept faces (11 is the dedup)
    merges = _chunks(review, "merges")
    assert [c["k"] for c in merges] == ["m:alice|carol #1", "m:bob|dave"]  # highest score first, keys of sorted identities
    merge = merges[1]
    assert merge["ids"] == ["dave", "bob"] and merge["into"] == "bob" and merge["sc"] == 0.62 and merge["sim"] == 0.61 and merge["ap"] is True
    assert merge["sz"] == [4, 6] and merge["ang"] == [20.5, 22.0]
    dave_faces, bob_faces = ([f["x"] for f in side] for side in merge["f"])
    assert sorted(dave_faces) == [18, 19, 20]  # dave's kept (merged) images; 21 was dropped
    assert len(bob_faces) == 5 and 11 not in bob_faces  # bob's kept images, not the dedup one
    assert all(f["t"] == f"thumbs/0/{f['x']}.jpg" for side in merge["f"] for f in side)
    splits = _chunks(review, "splits")
    assert [c["k"] for c in splits] == ["s:carol #1", "s:alice"]  # the scored split first
    calibrated, angle_rule = splits
    assert [[f["x"] for f in g] for g in calibrated["f"]] == [[13, 14, 15], [16, 17]]
    assert calibrated["sz"] == [3, 2] and calibrated["sc"] == 0.88 and calibrated["new"] == "carol #1#2" and calibrated["ap"] is False
    assert angle_rule["g"] == ["sub-center 0 (57%)", "sub-center 1 (43%)"] and angle_rule["sz"] == [4, 1]
    assert [f["x"] for f in angle_rule["f"][1]] == [4]  # kept faces nearest sub-center 1 (5 dropped, 6 relabelled)
    duplicates = _chunks(review, "duplicates")
    assert [c["k"] for c in duplicates] == ["i1", "i10"]  # highest cosine first, keyed by the second image
    pair = duplicates[1]
    assert pair["x"] == 10 and pair["cos"] == 0.991 and pair["id"] == "bob" and pair["a"] == "keep" and pair["l"].endswith("bob/003.png")
    assert pair["p"]["x"] == 7 and pair["p"]["id"] == "bob" and pair["p"]["t"] == "thumbs/0/7.jpg"


def test_chunks_thumbnails_placeholders_and_a_later_render(review_clean, tmp_path):
    out = tmp_path / "elsewhere"
    index = render_review(review_clean, out=out, chunk_size=1)
    assert index == out / "index.html"
    assert [read_data_js(out / "data" / f"drops-{n}.js")[1][2][0]["k"] for n in (0, 1)] == ["i21", "i5"]
    assert not (out / "data" / "drops-2.js").exists()
    thumbs = sorted(p.relative_to(out).as_posix() for p in (out / "thumbs").rglob("*.jpg"))
    shown = {21, 5, 14, 13, 6, 10, 7, 1, 0} | {18, 19, 20} | {15, 16, 17} | {2, 3, 4} | {8, 9, 12}
    assert thumbs == sorted(f"thumbs/0/{i}.jpg" for i in shown)  # the faces on the cards, nothing else (11: dedup; not shown)
    stamp = (out / "thumbs/0/21.jpg").stat().st_mtime_ns
    render_review(review_clean, out=out, chunk_size=1)
    assert (out / "thumbs/0/21.jpg").stat().st_mtime_ns == stamp  # reused, not written again
    plain = render_review(review_clean, out=tmp_path / "plain", placeholder_thumbs=True).parent
    assert not (plain / "thumbs").exists()
    drop = _chunks(plain, "drops")[0]
    assert "t" not in drop and drop["h"].endswith("dave/003.png")
    assert read_data_js(plain / "data" / "meta.js")[1][0]["placeholders"] is True


def test_outputs_without_scores_rank_drops_by_angle(tmp_path):
    clean = make_purify_dir(tmp_path)  # the angle rule: no noise_score column
    review = render_review(clean, placeholder_thumbs=True).parent
    drops = _chunks(review, "drops")
    assert [c["g"] for c in drops] == sorted(c["g"] for c in drops) and all("s" not in c for c in drops)
    meta = read_data_js(review / "data" / "meta.js")[1][0]
    assert {q["key"]: q["count"] for q in meta["queues"]}["suspects"] == 0


def test_bad_directories_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        render_review(tmp_path / "missing")
    with pytest.raises(DataError, match="no decisions.csv"):
        render_review(tmp_path)
    (tmp_path / "decisions.csv").write_text("index,location\n0,x\n")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON") as info:
        render_review(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(DataError, match="lacks the column"):
        render_review(tmp_path)
    with pytest.raises(DataError, match="chunk_size"):
        render_review(tmp_path, chunk_size=0)


def test_cli_prints_the_page_and_opens_it(review_clean, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    runner = CliRunner()
    out = tmp_path / "rv"
    result = runner.invoke(cli, ["review", str(review_clean), "--out", str(out), "--placeholder-thumbs", "--chunk-size", "1", "--open", "--silent"])
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in result.output.replace("\n", "")
    assert opened == [(out / "index.html").resolve().as_uri()]
    assert (out / "data" / "drops-1.js").is_file() and not (out / "thumbs").exists()
    result = runner.invoke(cli, ["review", str(tmp_path)])
    assert result.exit_code == 1 and "no decisions.csv" in result.output and "Traceback" not in result.output
    for command in COMMANDS:
        assert command.help and all(p.help for p in command.params if p.param_type_name == "option")


def test_purify_report_points_to_the_review(review_clean):
    from cleanface.report.purify import render_purify_report

    text = render_purify_report(review_clean, placeholder_thumbs=True).read_text()
    assert "cleanface review" in text


# -- the page in headless Chromium --------------------------------------------------------------------------

pytest_browser = pytest.mark.browser


@pytest_browser
def test_page_loads_cleanly_and_renders_the_first_queue(chromium, review_clean):
    index = render_review(review_clean)
    loaded = browser.load_page(index, width=1100, height=800, settle_ms=300)
    assert loaded.console_errors == [] and loaded.network_requests == [] and loaded.failed == []
    assert any(u.endswith("data/drops-0.js") for u in loaded.requests)
    assert not any(u.endswith("data/names.js") for u in loaded.requests)  # only when a move opens
    with browser.Session(width=1200, height=900) as page:
        page.open(index)
        page.wait_for("document.querySelectorAll('.card').length === 2")
        assert page.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.key)") == ["i21", "i5"]
        assert page.evaluate("document.querySelector('.card.current').dataset.key") == "i21"
        assert page.evaluate("document.getElementById('progress').textContent") == "0 of 11 reviewed"
        assert page.evaluate("document.getElementById('page-info').textContent") == "page 1 of 1"
        page.evaluate("document.querySelector('.card[data-key=i21] button[data-act=keep]').click()")
        assert page.evaluate("document.querySelector('.card[data-key=i21]').dataset.decision") == "keep"
        assert page.evaluate("document.querySelector('.card.current').dataset.key") == "i5"
        page.press("m")
        page.wait_for("document.getElementById('move-results').textContent.includes('type to search 7 identities')")
        page.evaluate("var i = document.getElementById('move-input'); i.value = 'BO'; i.dispatchEvent(new Event('input'))")
        assert page.evaluate("Array.from(document.querySelectorAll('#move-results [data-name]')).map(e => e.dataset.name)") == ["bob"]
        page.press("Enter")
        assert page.evaluate("document.querySelector('.card[data-key=i5]').dataset.decision") == "move:bob"
        assert page.evaluate("document.getElementById('progress').textContent") == "2 of 11 reviewed"
        page.press("u")
        assert page.evaluate("document.querySelector('.card[data-key=i5]').dataset.decision") == ""
        page.evaluate("document.querySelector('[data-queue=merges]').click()")
        page.wait_for("!!document.querySelector('.card[data-key=\"m:bob|dave\"]')")
        page.press("r")
        overrides = page.evaluate("CF_REVIEW.overrides()")
        assert overrides["format"] == "cleanface-overrides" and overrides["version"] == 1 and overrides["clean"] == str(review_clean.resolve())
        assert [(i["index"], i["decision"], i["old"]) for i in overrides["images"]] == [(21, "keep", "drop")]
        assert overrides["merges"][0]["identities"] == ["carol #1", "alice"] and overrides["merges"][0]["decision"] == "reject"
        page.evaluate("window.beforeReload = true; location.reload()")
        page.wait_for("!window.beforeReload && !!document.querySelector('.card[data-key=i21]')")
        assert page.evaluate("document.querySelector('.card[data-key=i21]').dataset.decision") == "keep"
        assert page.evaluate("document.getElementById('progress').textContent") == "2 of 11 reviewed"
        assert page.errors == []
