"""A tiny real pipeline end to end: every stage kind, skipping, re-running after a change, resuming training."""

from __future__ import annotations

import json

import pytest

import cleanface.pipeline.stages  # noqa: F401  (registers the stage kinds)
from cleanface.pipeline.engine import plan_pipeline, run_pipeline
from cleanface.pipeline.spec import apply_overrides, parse_pipeline

TRAIN = """input_size = 32
embedding_size = 32
batch_size = 16
epochs = 2
lr = 0.05
scale = 32.0
margin = 0.3
checkpoint_every = 2
"""

PIPE = f"""
name = "tiny"
[[stage]]
name = "data"
kind = "make-synthetic"
identities = 8
per_identity = 10
size = 32
eval_identities = 6
eval_per_identity = 4
eval_pairs = 40
[[stage]]
name = "noise"
kind = "inject-noise"
input = "data"
close_set = 0.1
open_set = 0.1
seed = 1
[[stage]]
name = "sub"
kind = "train-subcenter"
input = "noise"
k = 2
{TRAIN}
[[stage]]
name = "purify"
kind = "purify"
input = "noise"
run = "sub"
truth = "noise"
[[stage]]
name = "final"
kind = "train-final"
input = "purify"
loss = "elastic-arc+"
{TRAIN}
[[stage]]
name = "evaluate"
kind = "evaluate"
pairs = "data"
purified = "final"
[[stage]]
name = "report"
kind = "report"
"""

NAMES = ["data", "noise", "sub", "purify", "final", "evaluate", "report"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANFACE_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_skip_then_rerun_downstream(tmp_path, cache):
    spec = parse_pipeline(PIPE)
    work = tmp_path / "w"
    result = run_pipeline(spec, work, silent=True)
    assert [p.action for p in result.plan] == ["run"] * len(NAMES)
    summary = json.loads((work / "purify" / "clean" / "summary.json").read_text())
    assert summary["images_before"] == sum(1 for _ in open(work / "noise" / "noisy" / "noise_truth.csv")) - 1
    evaluation = json.loads((work / "evaluate" / "evaluate.json").read_text())
    assert 0.0 <= evaluation["purified"]["accuracy"] <= 1.0
    assert (work / "report").is_dir() and any((work / "report").rglob("index.html"))
    for stage in ("sub", "final"):
        assert (work / stage / "run" / "COMPLETE").is_file()
        assert (work / stage / "run" / "report" / "index.html").is_file()

    again = run_pipeline(spec, work, silent=True)
    assert [p.action for p in again.plan] == ["skip"] * len(NAMES)

    changed = apply_overrides(parse_pipeline(PIPE), ["purify.threshold=70"])
    actions = [p.action for p in plan_pipeline(changed, work)]
    assert actions == ["skip", "skip", "skip", "run", "run", "run", "run"]


@pytest.mark.slow
def test_training_interrupted_in_a_pipeline_resumes_from_its_checkpoint(tmp_path, cache, monkeypatch):
    import cleanface.training.trainer as trainer

    spec = apply_overrides(parse_pipeline(PIPE), [])
    work = tmp_path / "w"
    steps: list[int] = []
    original = trainer._Trainer._step

    def counting(self, x, y, lr):
        steps.append(1)
        if len(steps) == 7:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of train-subcenter
        return original(self, x, y, lr)

    monkeypatch.setattr(trainer._Trainer, "_step", counting)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, work, silent=True)
    from cleanface.training import checkpoint

    saved = checkpoint.load(work / "sub" / "run" / "checkpoints" / "last.pt")["step"]
    assert saved == 6
    assert [p.action for p in plan_pipeline(spec, work)][:3] == ["skip", "skip", "resume"]
    steps.clear()
    run_pipeline(spec, work, silent=True, until_stage="sub")
    total = json.loads((work / "sub" / "run" / "config.json").read_text())["total_steps"]
    assert len(steps) == total - saved  # only the steps after the checkpoint were trained again
    rows = [json.loads(line)["step"] for line in (work / "sub" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == sorted(set(rows)) and rows[-1] == total  # one line per logged step, none repeated by the resume
