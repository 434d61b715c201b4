"""The hand-written SVG charts: ticks, scaling, markers, stacking, thinning."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cleanface.report import svg


@pytest.mark.parametrize("lo,hi", [(0, 1), (0.3, 10.7), (-5, 5), (0, 180), (1e-4, 3e-3), (12345, 987654)])
def test_nice_ticks_cover_the_range_with_round_even_steps(lo, hi):
    ticks = svg.nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 11
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    assert ticks[0] >= lo - 1e-12 and ticks[-1] <= hi + 1e-9
    assert ticks[0] - lo < steps[0] + 1e-12 and hi - ticks[-1] < steps[0] + 1e-9
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def _parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_histogram_marker_sits_at_the_threshold_and_bars_count_every_value():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 180, 500)
    text = svg.histogram(values, bins=36, value_range=(0, 180), marker=90.0, marker_label="threshold 90", title="t", x_label="deg")
    root = _parse(text)
    line = [e for e in root.iter("line") if e.get("class") == "marker"]
    assert len(line) == 1
    frame_rect = next(root.iter("rect"))
    x0, w = float(frame_rect.get("x")), float(frame_rect.get("width"))
    assert float(line[0].get("x1")) == pytest.approx(x0 + w / 2, abs=0.2)
    counts = [int(re.search(r": (\d+)$", t.text).group(1)) for t in root.iter("title") if t.text and ":" in t.text]
    assert sum(counts) == 500
    assert "threshold 90" in text


def test_stacked_histogram_has_one_group_and_legend_entry_per_series():
    text = svg.histogram({"clean": np.full(10, 20.0), "open-set": np.full(4, 100.0), "merged": np.array([101.0, np.nan])},
                         bins=18, value_range=(0, 180), title="t", x_label="deg")
    root = _parse(text)
    groups = [g for g in root.iter("g") if g.get("fill")]
    assert len(groups) == 3
    labels = [t.text for t in root.iter("text")]
    assert {"clean", "open-set", "merged"} <= set(labels)
    heights = [sum(float(r.get("height")) for r in g.iter("rect")) for g in groups]
    assert heights[0] > heights[1] > heights[2] > 0  # 10, 4 and 1 finite values


def test_line_chart_thins_long_series_and_keeps_the_last_point():
    x = np.arange(100_000, dtype=float)
    text = svg.line_chart({"loss": (x, np.sqrt(x))}, title="loss", x_label="step", y_label="loss", max_points=500)
    points = _parse(text).find("polyline").get("points").split()
    assert 400 <= len(points) <= 501
    assert len(text) < 20_000
    last_x = float(points[-1].split(",")[0])
    frame = next(_parse(text).iter("rect"))
    assert last_x == pytest.approx(float(frame.get("x")) + float(frame.get("width")), abs=0.2)


def test_roc_uses_a_log_axis_for_small_false_accept_rates():
    far = np.logspace(-5, 0, 20)
    text = svg.roc_curve(far, far**0.1, auc=0.97)
    labels = [t.text for t in _parse(text).iter("text")]
    assert "1e-05" in labels and "1" in labels
    assert "AUC 0.9700" in text


def test_charts_escape_labels():
    text = svg.line_chart({"a<b": ([0, 1], [0, 1])}, title="x & y", x_label="<step>", y_label="v")
    _parse(text)  # well-formed
    assert "<step>" not in text and "&lt;step&gt;" in text
