"""A pipeline stops after purify for a review, and continues with apply and what follows once the overrides file exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cleanface.data.open import open_dataset
from cleanface.errors import PipelinePaused
from cleanface.pipeline import stages as _stages  # noqa: F401  (registers the stage kinds)
from cleanface.pipeline.engine import plan_pipeline, register_stage, run_pipeline
from cleanface.pipeline.spec import parse_pipeline
from tests.purify.test_apply import make_clean, sample, write_overrides

CALLS: list[str] = []


@register_stage("test-purified", refs=())
def _purified(ctx):
    """A real purify output (tests/purify/test_apply.py's hand-made embeddings)."""
    CALLS.append(ctx.spec.name)
    clean = make_clean(ctx.dir)
    return {"summary": str(clean / "summary.json"), "data": str(clean / "data")}


@register_stage("test-count", refs=("input",))
def _count(ctx):
    """Count the images of the upstream dataset (stands in for train-final)."""
    CALLS.append(ctx.spec.name)
    return {"images": len(open_dataset(ctx.upstream("input", "data"), silent=True))}


PIPE = """
name = "review"
[[stage]]
name = "purify"
kind = "test-purified"
[[stage]]
name = "review"
kind = "apply"
input = "purify"
overrides = "overrides.json"
[[stage]]
name = "train-final"
kind = "test-count"
input = "review"
"""


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    yield


def test_the_pipeline_waits_for_the_review_then_continues(tmp_path: Path) -> None:
    spec = parse_pipeline(PIPE)
    with pytest.raises(PipelinePaused, match="waits for a review") as paused:
        run_pipeline(spec, tmp_path, silent=True)
    page = tmp_path / "purify" / "clean" / "review" / "index.html"
    assert str(page) in str(paused.value) and page.is_file()  # the page to review with is there
    assert CALLS == ["purify"]
    assert [p.action for p in plan_pipeline(spec, tmp_path)] == ["skip", "resume", "run"]

    purified = json.loads((tmp_path / "purify" / "clean" / "summary.json").read_text())["images_after"]
    write_overrides(tmp_path / "overrides.json", images=[{"index": sample("p06", 0), "decision": "drop"}])
    result = run_pipeline(spec, tmp_path, silent=True)
    assert CALLS == ["purify", "train-final"]  # the purify stage is reused; apply ran, then the stage after it
    assert result.outputs["train-final"]["images"] == purified - 1
    assert (tmp_path / "review" / "final" / "decisions.csv").read_text().count(",reviewed,") == 1

    CALLS.clear()
    run_pipeline(spec, tmp_path, silent=True)
    assert CALLS == []  # same overrides: everything is up to date
    write_overrides(tmp_path / "overrides.json", images=[{"index": sample("p06", 0), "decision": "drop"}, {"index": sample("p06", 1), "decision": "drop"}])
    result = run_pipeline(spec, tmp_path, silent=True)
    assert CALLS == ["train-final"] and result.outputs["train-final"]["images"] == purified - 2  # a changed review re-runs apply and after


def test_cli_run_exits_with_the_paused_status(tmp_path: Path) -> None:
    from cleanface_cli.main import cli
    from cleanface_cli.run_cmds import PAUSED_STATUS

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(PIPE)
    result = CliRunner().invoke(cli, ["run", str(pipeline), "--workdir", str(tmp_path / "w"), "--silent"])
    assert result.exit_code == PAUSED_STATUS, result.output
    assert "paused" in result.output and "export the overrides to" in result.output
