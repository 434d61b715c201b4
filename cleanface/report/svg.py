"""Small hand-written SVG charts: line charts, stacked histograms and ROC curves.

Every chart is a self-contained ``<svg>`` string with real ``<text>`` labels (no
images of text, no scripts, no external references), sized in CSS pixels through its
``viewBox`` so that it scales with the page. Long series are thinned to at most
``max_points`` points (every k-th point plus the last), so a chart of a million
logged steps stays a few kilobytes.
"""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

import numpy as np

PALETTE = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#2c7a7b", "#97266d", "#4a5568")
MARKER_COLOUR = "#111111"
_MARGIN = (48, 16, 40, 62)  # top, right, bottom, left, in pixels


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def format_tick(value: float) -> str:
    """A short label for a tick value: ``0.5``, ``1200``, ``3e-04``, ``1.2M``."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:g}k"
    if magnitude < 1e-3:
        return f"{value:.0e}"
    return f"{value:.6g}"


def thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point of (x, y) plus the last one, so that at most about ``max_points`` remain."""
    n = len(x)
    if n <= max_points:
        return x, y
    step = math.ceil(n / max_points)
    keep = np.unique(np.append(np.arange(0, n, step), n - 1))
    return x[keep], y[keep]


class _Frame:
    """Plot area geometry and the data-to-pixel mapping of one chart."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float], *, log_x: bool = False) -> None:
        top, right, bottom, left = _MARGIN
        self.width, self.height = width, height
        self.left, self.top = left, top
        self.plot_w, self.plot_h = width - left - right, height - top - bottom
        self.log_x = log_x
        x0, x1 = x_range
        if log_x:
            x0, x1 = math.log10(x0), math.log10(x1)
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1.0
        y0, y1 = y_range
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1.0

    def px(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.log_x:
            x = np.log10(np.maximum(x, 10.0**self.x0))
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.plot_w

    def py(self, y: np.ndarray | float) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        return self.top + self.plot_h - (y - self.y0) / (self.y1 - self.y0) * self.plot_h


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str, *, x_tick_text: Sequence[str] | None = None) -> list[str]:
    f = frame
    bottom = f.top + f.plot_h
    parts = [f'<rect x="{f.left}" y="{f.top}" width="{f.plot_w}" height="{f.plot_h}" fill="none" stroke="#999"/>']
    for value in y_ticks:
        y = float(f.py(value))
        parts.append(f'<line x1="{f.left}" x2="{f.left + f.plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e2e2"/>')
        parts.append(f'<line x1="{f.left - 4}" x2="{f.left}" y1="{y:.1f}" y2="{y:.1f}" stroke="#333"/>')
        parts.append(f'<text x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(format_tick(value))}</text>')
    texts = list(x_tick_text) if x_tick_text is not None else [format_tick(v) for v in x_ticks]
    for value, text in zip(x_ticks, texts):
        x = float(f.px(value))
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{escape(text)}</text>')
    parts.append(f'<text x="{f.left + f.plot_w / 2:.0f}" y="{f.height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    cy = f.top + f.plot_h / 2
    parts.append(f'<text x="14" y="{cy:.0f}" text-anchor="middle" transform="rotate(-90 14 {cy:.0f})">{escape(y_label)}</text>')
    return parts


def _legend(frame: _Frame, names: Sequence[str], colours: Sequence[str]) -> list[str]:
    parts, x = [], frame.left
    for name, colour in zip(names, colours):
        parts.append(f'<rect x="{x}" y="26" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="35">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts


def _finite_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    values = [a[np.isfinite(a)] for a in arrays if len(a)]
    values = [v for v in values if len(v)]
    if not values:
        return 0.0, 1.0
    return float(min(v.min() for v in values)), float(max(v.max() for v in values))


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 260,
    log_x: bool = False,
    y_min: float | None = None,
    y_max: float | None = None,
    max_points: int = 800,
    diagonal: bool = False,
) -> str:
    """Line chart of one or more named series.

    Parameters
    ----------
    series : mapping of name to (x, y)
        Each x and y of shape (P,); non-finite points are left out.
    log_x : bool
        Logarithmic x axis (x must be positive; zeros are clipped to the smallest tick).
    y_min, y_max : float, optional
        Fixed y range (else the data range).
    diagonal : bool
        Draw the dashed y = x line (for ROC curves).

    Returns
    -------
    str
        An ``<svg>`` element.
    """
    cleaned: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (xs, ys) in series.items():
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if log_x:
            ok &= x > 0
        cleaned[name] = thin(x[ok], y[ok], max_points)
    x_lo, x_hi = _finite_range([x for x, _ in cleaned.values()])
    y_lo, y_hi = _finite_range([y for _, y in cleaned.values()])
    y_lo = y_lo if y_min is None else y_min
    y_hi = y_hi if y_max is None else y_max
    if log_x:
        x_lo, x_hi = 10 ** math.floor(math.log10(max(x_lo, 1e-12))), 10 ** math.ceil(math.log10(max(x_hi, 1e-12)))
        x_ticks = [10.0**e for e in range(int(round(math.log10(x_lo))), int(round(math.log10(x_hi))) + 1)]
    else:
        x_ticks = nice_ticks(x_lo, x_hi)
        x_lo, x_hi = min([x_lo, *x_ticks]), max([x_hi, *x_ticks])
    y_ticks = nice_ticks(y_lo, y_hi)
    if y_min is None and y_max is None and len(y_ticks) > 1:
        y_lo, y_hi = min(y_lo, y_ticks[0]), max(y_hi, y_ticks[-1])
    frame = _Frame(width, height, (x_lo, x_hi), (y_lo, y_hi), log_x=log_x)
    parts = _open(width, height, title)
    parts += _axes(frame, x_ticks, [t for t in y_ticks if y_lo <= t <= y_hi], x_label, y_label)
    if diagonal:
        lo, hi = max(x_lo, y_lo), min(x_hi, y_hi)
        xs = np.geomspace(lo, hi, 50) if log_x else np.array([lo, hi])
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(frame.px(xs), frame.py(xs)))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>')
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(cleaned))]
    for (name, (x, y)), colour in zip(cleaned.items(), colours):
        if not len(x):
            continue
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(frame.px(x), frame.py(np.clip(y, y_lo, y_hi))))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"><title>{escape(name)}</title></polyline>')
    if len(cleaned) > 1:
        parts += _legend(frame, list(cleaned), colours)
    parts.append("</svg>")
    return "\n".join(parts)


def histogram(
    values: np.ndarray | Mapping[str, np.ndarray],
    *,
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    marker: float | None = None,
    marker_label: str = "",
    markers: Mapping[str, float] | None = None,
    title: str,
    x_label: str,
    y_label: str = "images",
    width: int = 640,
    height: int = 280,
) -> str:
    """Histogram of ``values``, stacked by series when given a mapping, with vertical marker lines.

    Parameters
    ----------
    values : ndarray of shape (N,) or mapping of name to ndarray
        Non-finite values are left out. With a mapping, the bars of each bin are stacked
        in the mapping's order and a legend names the series.
    value_range : (lo, hi), optional
        Histogram range (else the finite data range).
    marker, marker_label : float, str
        One vertical line (e.g. the threshold) and its label.
    markers : mapping of label to float, optional
        More vertical lines, dashed.

    Returns
    -------
    str
        An ``<svg>`` element.
    """
    stacks = {"": np.asarray(values)} if not isinstance(values, Mapping) else {k: np.asarray(v) for k, v in values.items()}
    stacks = {k: v[np.isfinite(v)].astype(np.float64) for k, v in stacks.items()}
    lo, hi = value_range if value_range is not None else _finite_range(list(stacks.values()))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.stack([np.histogram(v, bins=edges)[0] for v in stacks.values()]) if stacks else np.zeros((1, bins), np.int64)
    tops = counts.cumsum(axis=0)
    peak = float(tops[-1].max()) if tops.size else 0.0
    y_ticks = nice_ticks(0.0, max(peak, 1.0))
    frame = _Frame(width, height, (lo, hi), (0.0, max(peak, y_ticks[-1], 1.0)))
    parts = _open(width, height, title)
    parts += _axes(frame, nice_ticks(lo, hi, 8), y_ticks, x_label, y_label)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(stacks))]
    x_px = frame.px(edges)
    for s, colour in enumerate(colours):
        below = tops[s - 1] if s else np.zeros(bins)
        rects = []
        for b in range(bins):
            if counts[s, b] == 0:
                continue
            y_top, y_bottom = float(frame.py(tops[s, b])), float(frame.py(below[b]))
            rects.append(f'<rect x="{x_px[b]:.1f}" y="{y_top:.1f}" width="{max(x_px[b + 1] - x_px[b] - 0.5, 0.5):.1f}" '
                         f'height="{y_bottom - y_top:.1f}"><title>{edges[b]:.1f}-{edges[b + 1]:.1f}: {int(counts[s, b])}</title></rect>')
        parts.append(f'<g fill="{colour}">' + "".join(rects) + "</g>")
    lines = dict(markers or {})
    if marker is not None:
        lines = {marker_label or f"{marker:g}": marker, **lines}
    for i, (label, value) in enumerate(lines.items()):
        if value is None or not (lo <= value <= hi):
            continue
        x = float(frame.px(value))
        dash = "" if i == 0 and marker is not None else ' stroke-dasharray="5 3"'
        parts.append(f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{frame.top + frame.plot_h}" stroke="{MARKER_COLOUR}" stroke-width="1.5"{dash}/>')
        parts.append(f'<text x="{x + 4:.1f}" y="{frame.top + 12 + 13 * i}">{escape(label)}</text>')
    if len(stacks) > 1:
        parts += _legend(frame, list(stacks), colours)
    parts.append("</svg>")
    return "\n".join(parts)


def roc_curve(far: Sequence[float], tar: Sequence[float], *, auc: float | None = None, width: int = 420, height: int = 320) -> str:
    """ROC curve: true accept rate over false accept rate, log FAR axis when it reaches below 1e-2.

    Parameters
    ----------
    far, tar : sequences of shape (P,)
    auc : float, optional
        Shown in the title.
    """
    far_a, tar_a = np.asarray(far, dtype=np.float64), np.asarray(tar, dtype=np.float64)
    positive = far_a[far_a > 0]
    log_x = bool(len(positive)) and float(positive.min()) < 1e-2
    title = "ROC" if auc is None else f"ROC (AUC {auc:.4f})"
    return line_chart({"ROC": (far_a, tar_a)}, title=title, x_label="false accept rate", y_label="true accept rate",
                      width=width, height=height, log_x=log_x, y_min=0.0, y_max=1.0, diagonal=True)
