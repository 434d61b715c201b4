"""Pipeline stages render reports after their work, and a failing report does not fail the stage."""

from __future__ import annotations

from pathlib import Path

from cleanface.pipeline.stages import _report


def test_a_report_that_fails_is_recorded_not_raised(tmp_path: Path) -> None:
    def broken(directory, **kwargs):
        raise RuntimeError(f"no template for {directory.name}")

    assert _report(tmp_path / "run", broken) == {"report": None, "report_error": "RuntimeError: no template for run"}

    def fine(directory, **kwargs):
        assert kwargs == {"silent": True}
        return directory / "report" / "index.html"

    assert _report(tmp_path / "run", fine, silent=True) == {"report": str(tmp_path / "run" / "report" / "index.html")}
