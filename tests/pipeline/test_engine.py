"""The pipeline engine: fingerprints, skipping, re-running downstream, resume, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanface.errors import ConfigError
from cleanface.pipeline.engine import STAGE_KINDS, plan_pipeline, register_stage, run_pipeline
from cleanface.pipeline.spec import apply_overrides, parse_pipeline

CALLS: list[str] = []


@register_stage("test-write", refs=("input",))
def _write(ctx):
    """Write a number, plus the upstream number when there is one."""
    CALLS.append(ctx.spec.name)
    value = ctx.settings.get("value", 0)
    if "input" in ctx.settings:
        value += json.loads(Path(ctx.upstream("input", "file")).read_text())
    if ctx.settings.get("fail_once") and not (ctx.dir / "attempted").exists():
        (ctx.dir / "attempted").write_text("1")
        raise RuntimeError("simulated crash")
    out = ctx.dir / "value.json"
    out.write_text(json.dumps(value))
    return {"file": str(out), "value": value}


PIPE = """
name = "t"
[[stage]]
name = "a"
kind = "test-write"
value = 1
[[stage]]
name = "b"
kind = "test-write"
input = "a"
value = 10
[[stage]]
name = "c"
kind = "test-write"
input = "b"
value = 100
"""


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    yield


def test_runs_in_order_and_passes_outputs(tmp_path):
    result = run_pipeline(parse_pipeline(PIPE), tmp_path)
    assert CALLS == ["a", "b", "c"]
    assert result.outputs["c"]["value"] == 111
    assert (tmp_path / "c" / "COMPLETE").is_file()


def test_second_run_skips_every_stage(tmp_path):
    spec = parse_pipeline(PIPE)
    run_pipeline(spec, tmp_path)
    CALLS.clear()
    result = run_pipeline(spec, tmp_path)
    assert CALLS == []
    assert [p.action for p in result.plan] == ["skip", "skip", "skip"]
    assert result.outputs["c"]["value"] == 111


def test_changed_setting_reruns_that_stage_and_downstream(tmp_path):
    spec = parse_pipeline(PIPE)
    run_pipeline(spec, tmp_path)
    CALLS.clear()
    result = run_pipeline(apply_overrides(spec, ["b.value=20"]), tmp_path)
    assert CALLS == ["b", "c"]
    assert result.outputs["c"]["value"] == 121


def test_failed_stage_keeps_earlier_and_resumes(tmp_path):
    spec = apply_overrides(parse_pipeline(PIPE), ["b.fail_once=true"])
    with pytest.raises(RuntimeError):
        run_pipeline(spec, tmp_path)
    assert (tmp_path / "a" / "COMPLETE").is_file()
    assert not (tmp_path / "b" / "COMPLETE").exists()
    assert [p.action for p in plan_pipeline(spec, tmp_path)] == ["skip", "resume", "run"]
    CALLS.clear()
    run_pipeline(spec, tmp_path)
    assert CALLS == ["b", "c"]
    assert (tmp_path / "b" / "attempted").exists(), "a resumed stage keeps its directory"


def test_from_and_until(tmp_path):
    spec = parse_pipeline(PIPE)
    run_pipeline(spec, tmp_path, until_stage="b")
    assert CALLS == ["a", "b"] and not (tmp_path / "c").exists()
    CALLS.clear()
    run_pipeline(spec, tmp_path, from_stage="b")
    assert CALLS == ["b", "c"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = 1\n[[stage]]\nname='a'\nkind='test-write'", "name must be a string"),
        ("x = [", "not valid TOML"),
        ("name='p'", "no [[stage]] tables"),
        ("[[stage]]\nname='a'\nkind='nope'", "unknown kind 'nope'"),
        ("[[stage]]\nname='a'\nkind='test-write'\n[[stage]]\nname='a'\nkind='test-write'", "used twice"),
        ("[[stage]]\nname='a'\nkind='test-write'\ninput='zz'", "not an earlier stage"),
    ],
)
def test_bad_pipeline_files_give_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        plan_pipeline(parse_pipeline(text), tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_override_syntax_and_values():
    spec = apply_overrides(parse_pipeline(PIPE), ["a.value=5", "a.label=hello", "a.flag=true", "a.rates=[0.1, 0.2]"])
    assert spec.stage("a").settings == {"value": 5, "label": "hello", "flag": True, "rates": [0.1, 0.2]}
    with pytest.raises(ConfigError, match="stage.key=value"):
        apply_overrides(spec, ["avalue=1"])
    with pytest.raises(ConfigError, match="no stage named 'zz'"):
        apply_overrides(spec, ["zz.value=1"])


def test_registry_has_test_kind():
    assert "test-write" in STAGE_KINDS
