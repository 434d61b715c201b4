"""The review page end to end in headless Chromium: real clicks and keys, a reload, the export, then `cleanface apply`, row by row."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from . import browser
from cleanface.purify.apply import apply_overrides
from cleanface.report.review import render_review
from tests.purify.test_apply import make_clean, sample

pytestmark = pytest.mark.browser


def rows_of(path: Path) -> dict[int, dict[str, str]]:
    with open(path, newline="") as handle:
        return {int(r["index"]): r for r in csv.DictReader(handle)}


def decision(page: browser.Session, key: str) -> str:
    return page.evaluate(f"document.querySelector('.card[data-key=\"{key}\"]').dataset.decision")


def current(page: browser.Session) -> str:
    return page.evaluate("document.querySelector('.card.current').dataset.key")


def settle(page: browser.Session) -> None:
    page.wait_for("!CF_REVIEW.view().loading")


def open_queue(page: browser.Session, queue: str) -> None:
    page.click(f"[data-queue={queue}]")
    settle(page)
    page.wait_for(f"CF_REVIEW.view().queue === {json.dumps(queue)} && !!document.querySelector('.card')")


def test_review_clicks_keys_reload_export_then_apply(tmp_path: Path, chromium: str) -> None:
    clean = make_clean(tmp_path)
    page_path = render_review(clean)
    downloads = tmp_path / "downloads"
    kept, relabelled, moved, undone = sample("p03", 7), sample("p04", 7), sample("p02", 1), sample("p02", 2)
    with browser.Session(downloads=downloads) as page:
        page.open(page_path)
        settle(page)
        page.wait_for("!!document.querySelector('.card')")
        total = page.evaluate("document.querySelector('#progress').textContent")
        assert total.startswith("0 of ")

        open_queue(page, "drops")
        order = page.evaluate("Array.from(document.querySelectorAll('.card')).map(function (e) { return e.dataset.key; })")
        assert order == [f"i{kept}", *(f"i{sample('p02', j)}" for j in (2, 0, 3, 1))]  # angle rule: the smallest angle first
        page.click(f'.card[data-key="i{kept}"] button[data-act=keep]')  # keep an image (a click)
        assert decision(page, f"i{kept}") == "keep"
        assert current(page) == order[1]  # an action moves on

        page.click(f'.card[data-key="i{moved}"]')  # move one (keys and the name search)
        assert current(page) == f"i{moved}"
        page.press("m")
        page.wait_for("document.activeElement && document.activeElement.id === 'move-input'")
        page.type("p07")
        page.wait_for("!!document.querySelector('#move-results [data-name=\"p07\"]')")
        page.press("Enter")
        assert decision(page, f"i{moved}") == "move:p07"

        page.click(f'.card[data-key="i{undone}"]')  # a keep by key, then undo it
        page.press("y")
        assert decision(page, f"i{undone}") == "keep"
        page.press("u")
        assert decision(page, f"i{undone}") == ""

        open_queue(page, "relabels")
        page.click(f'.card[data-key="i{relabelled}"]')
        page.press("d")  # drop one
        assert decision(page, f"i{relabelled}") == "drop"

        open_queue(page, "merges")
        page.click('.card[data-key="m:p00|p01"]')
        page.press("r")  # reject a merge
        assert decision(page, "m:p00|p01") == "reject"

        open_queue(page, "splits")
        page.click('.card[data-key="s:p02"] button[data-act=accept]')  # accept a split
        assert decision(page, "s:p02") == "accept"

        progress = page.evaluate("document.querySelector('#progress').textContent")
        assert progress.startswith("5 of "), progress

        page.reload()  # the work survives
        settle(page)
        page.wait_for("!!document.querySelector('.card')")
        assert page.evaluate("document.querySelector('#progress').textContent") == progress
        open_queue(page, "drops")
        assert (decision(page, f"i{kept}"), decision(page, f"i{moved}"), decision(page, f"i{undone}")) == ("keep", "move:p07", "")
        open_queue(page, "merges")
        assert decision(page, "m:p00|p01") == "reject"

        page.click("#export")
        deadline = time.monotonic() + 20
        while not (downloads / "overrides.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert page.errors == []
    exported = json.loads((downloads / "overrides.json").read_text())
    assert exported["format"] == "cleanface-overrides" and exported["version"] == 1
    assert {(o["index"], o["decision"], o.get("identity")) for o in exported["images"]} == {
        (kept, "keep", None), (moved, "move", "p07"), (relabelled, "drop", None)}
    assert exported["merges"][0]["decision"] == "reject" and sorted(exported["merges"][0]["identities"]) == ["p00", "p01"]
    assert exported["splits"] == [{**exported["splits"][0], "identity": "p02", "decision": "accept"}]

    final = apply_overrides(clean, downloads / "overrides.json", tmp_path / "final", silent=True)
    purified, rows = rows_of(clean / "decisions.csv"), rows_of(final / "decisions.csv")
    expected = {
        kept: ("keep", "p03"), moved: ("relabel", "p07"), relabelled: ("drop", ""),
        **{sample("p01", j): ("keep", "p01") for j in range(8)},  # merge rejected
        **{sample("p02", j): ("new-identity", "p02#2") for j in (0, 2, 3)},  # split accepted (p02/1 was moved on its own)
    }
    for i, row in rows.items():
        want = expected.get(i, (purified[i]["action"], purified[i]["new_identity"]))
        assert (row["action"], row["new_identity"]) == want, (i, row)
        assert (row["reason"] == "reviewed") == (i in expected), i
        assert row["purify_action"] == purified[i]["action"]
