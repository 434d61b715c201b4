"""The review page at scale: 1,000,000 images of 100,000 identities, placeholder thumbnails.

The synthetic purify output of ``benchmarks/report_scale.py`` (with noise scores) is
written first (not timed); then :func:`cleanface.report.review.render_review` writes the
review page with ``placeholder_thumbs=True``, and headless Chromium (the test suite's
DevTools driver, ``tests/report/browser.py``) opens it and measures:

* the time to first contentful paint and the time until the first cards are on screen
  (both from the navigation start, median of ``--repeats`` fresh browsers);
* moving through the drops queue with the ``j`` key across chunk boundaries (chunks are
  loaded on demand), per key press;
* the name search of a move over every identity name (``names.js`` loaded on first use);
* the bytes a decision takes in ``localStorage`` (the page keeps its work there; Chromium
  gives all ``file://`` pages one quota of about 10 MB).

Render time, peak memory and the size on disk (total and per part) are reported too.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/review_scale.py --out bench-out/review_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.report_scale import make_purify_dir  # noqa: E402
from cleanface.report._pages import folder_size  # noqa: E402
from cleanface.report.review import render_review  # noqa: E402

FIRST_CARDS = ("new Promise(function (done) { (function look() { if (document.querySelector('.card')) { done(performance.now()); } "
               "else { requestAnimationFrame(look); } })(); })")
FIRST_PAINT = "(performance.getEntriesByType('paint').filter(function (e) { return e.name === 'first-contentful-paint'; })[0] || {}).startTime"


def first_paint(page_path: Path) -> dict[str, float]:
    """Milliseconds from navigation start to the first contentful paint and to the first card, in a fresh browser."""
    from report.browser import Session

    with Session() as page:
        page._call("Page.navigate", {"url": page_path.resolve().as_uri()})
        cards = page.evaluate(FIRST_CARDS)
        page.pipe.wait_event("Page.loadEventFired", timeout=60)
        return {"cards_ms": float(cards), "fcp_ms": float(page.evaluate(FIRST_PAINT) or "nan"), "errors": page.errors}


def interactions(page_path: Path, keys: int, last_name: str) -> dict[str, float]:
    """Key presses through the drops queue, a move search, and localStorage bytes per decision."""
    from report.browser import Session

    with Session() as page:
        page.open(page_path)
        page.wait_for("!!document.querySelector('.card') && !CF_REVIEW.view().loading")
        t0 = time.perf_counter()
        for _ in range(keys):
            page.press("j")
            page.wait_for("!CF_REVIEW.view().loading")
        per_key = (time.perf_counter() - t0) * 1000 / keys
        chunk = page.evaluate("CF_REVIEW.view().chunk")
        for _ in range(100):
            page.press("d")
            page.wait_for("!CF_REVIEW.view().loading")
        stored = page.evaluate("(function () { var n = 0; for (var i = 0; i < localStorage.length; i++) { var k = localStorage.key(i); "
                               "n += k.length + localStorage.getItem(k).length; } return n; })()")
        decided = page.evaluate("Object.keys(CF_REVIEW.state().decisions).length")
        page.press("m")
        page.wait_for("document.activeElement && document.activeElement.id === 'move-input'")
        t0 = time.perf_counter()
        page.type(last_name)
        page.wait_for(f"!!document.querySelector('#move-results [data-name={json.dumps(last_name)}]')")
        search_ms = (time.perf_counter() - t0) * 1000
        return {"ms_per_key": round(per_key, 2), "chunk_reached": chunk, "decisions": decided,
                "storage_bytes_per_decision": round(stored / max(decided, 1), 1), "move_search_ms": round(search_ms, 1),
                "errors": page.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="Fresh browsers for the first-paint times (median reported).")
    parser.add_argument("--keys", type=int, default=300, help="j presses through the drops queue.")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/review_scale.json"))
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cleanface-review-scale-"))
    clean = work / "clean"
    result: dict = {"images": args.images, "identities": args.identities, "python": platform.python_version(), "cpus": os.cpu_count(),
                    "command": " ".join(sys.argv)}
    try:
        t0 = time.perf_counter()
        result["synthetic"] = make_purify_dir(clean, args.images, args.identities, scores=True)
        print(f"synthetic purify output in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        page_path = render_review(clean, placeholder_thumbs=True, silent=False)
        result["render_s"] = round(time.perf_counter() - t0, 2)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        review = page_path.parent
        size, files = folder_size(review)
        result["review_bytes"], result["review_files"] = size, files
        result["first_load_bytes"] = sum((review / p).stat().st_size for p in ("index.html", "review.js", "review.css", "data/meta.js", "data/drops-0.js"))
        result["names_bytes"] = (review / "data" / "names.js").stat().st_size
        meta = (review / "data" / "meta.js").read_text()
        result["queues"] = json.loads(meta[meta.index("(") + 1:meta.rindex(")")])["queues"]
        print(f"render {result['render_s']} s, peak RSS {result['peak_rss_mb']} MB, {size / 1e6:.1f} MB in {files:,} files "
              f"(first load {result['first_load_bytes'] / 1e3:.0f} kB)", flush=True)
        paints = [first_paint(page_path) for _ in range(max(1, args.repeats))]
        result["cards_ms"] = round(statistics.median(p["cards_ms"] for p in paints), 1)
        result["fcp_ms"] = round(statistics.median(p["fcp_ms"] for p in paints), 1)
        result["errors"] = sorted({e for p in paints for e in p["errors"]})
        print(f"first contentful paint {result['fcp_ms']} ms, first cards {result['cards_ms']} ms", flush=True)
        result["interactions"] = interactions(page_path, args.keys, f"person_{args.identities - 1:06d}")
        print(f"interactions: {result['interactions']}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
