"""Reports in headless Chromium: no console error, no network request, a screenshot that is not blank."""

from __future__ import annotations

from io import BytesIO

import pytest

from . import browser
from cleanface.report.purify import render_purify_report
from cleanface.report.training import render_training_report

pytestmark = pytest.mark.browser


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_purify_report_pages_load_cleanly(chromium, purify_dir):
    report = render_purify_report(purify_dir).parent
    shots = {}
    for page in ("index.html", "identities/0.html", "pages/merges-1.html", "pages/identities-size-1.html"):
        loaded = browser.load_page(report / page, width=1000, height=800, screenshot=page == "index.html")
        assert loaded.console_errors == [], page
        assert loaded.network_requests == [], page
        assert loaded.failed == [], page
        assert any(u.endswith("style.css") for u in loaded.requests)
        if page in ("identities/0.html", "pages/merges-1.html"):  # thumbnails near the top load at once
            assert any("/thumbs/" in u for u in loaded.requests)
        shots[page] = loaded.screenshot
    assert _distinct_colours(shots["index.html"]) > 8


def test_calibrated_purify_report_pages_load_cleanly(chromium, calibrated_purify_dir):
    report = render_purify_report(calibrated_purify_dir).parent
    for page in ("index.html", "pages/suspects-1.html"):
        loaded = browser.load_page(report / page, width=1000, height=800)
        assert loaded.console_errors == [] and loaded.network_requests == [] and loaded.failed == [], page
    assert any("/thumbs/" in u for u in loaded.requests)  # the ranked faces are at the top of the list page


def test_screenshot_helper_writes_a_png_of_the_asked_size(chromium, run_dir, tmp_path):
    from PIL import Image

    index = render_training_report(run_dir)
    png = browser.screenshot(index, tmp_path / "shot.png", 900, 700)
    with Image.open(png) as image:
        assert image.size == (900, 700)
    assert _distinct_colours(png.read_bytes()) > 8


def test_a_console_error_and_a_network_request_are_caught(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><link rel="icon" href="data:,"></head><body>x'
                    '<img src="http://127.0.0.1:9/none.png"><script>console.error("boom")</script></body></html>')
    loaded = browser.load_page(page)
    assert any("boom" in e for e in loaded.console_errors)
    assert loaded.network_requests == ["http://127.0.0.1:9/none.png"]
