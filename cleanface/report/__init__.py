"""Self-contained HTML reports (Jinja2 templates, hand-written SVG charts) for every stage.

* :func:`render_training_report` -- a run directory's curves, verification and configuration;
* :func:`render_purify_report` -- a purify output directory, down to every image;
* :func:`render_pipeline_report` -- one page linking the stage reports of a pipeline;
* :func:`render_report` -- whichever of the three fits a directory.

Reports make no network request and open from ``file://``.
"""

from __future__ import annotations

from cleanface.report.detect import detect_report_kind, render_report
from cleanface.report.pipeline import render_pipeline_report
from cleanface.report.purify import render_purify_report
from cleanface.report.training import render_training_report

__all__ = ["detect_report_kind", "render_pipeline_report", "render_purify_report", "render_report", "render_training_report"]
