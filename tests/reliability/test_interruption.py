"""SIGKILL at seeded random points of train-subcenter, embed, purify and train-final.

Each stage is run once to the end (the reference), then again, killed at two points drawn
with a fixed seed from the events the reference went through (renames, links, training
steps, embedding and decoding chunks; see ``_kill_driver.py``) and once more just before
its completion mark is renamed into place (purify: also before its report is), re-run until it
completes, and compared with the reference:
equal weights and losses for training, byte-identical files for embed and purify.
After every kill nothing may look complete that is not, and every file already in
place must read back.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cleanface.training import checkpoint
from tests.reliability.conftest import Result, cleanface, train_args

pytestmark = pytest.mark.slow

SEED = 8  # draws the kill points; any seed must pass


def _kill_points(stage: str, events: list[str], seed: int) -> list[int]:
    """Two kill points drawn for ``stage``: one in the first half of the reference's events, one later."""
    rng = random.Random(f"{stage}/{seed}")
    n = len(events)
    first = rng.randint(1, max(1, n // 2))
    return [first, rng.randint(1, max(1, n - first))]


def _chain(stage: str, args: list, rerun_args: list, ref_events: list[str], logs: Path, check_partial, *, markers: list[str],
           seed: int = SEED) -> list[Result]:
    """Kill a run at two drawn points, then once before each event in ``markers`` (the last one: the
    completion mark), then let a re-run finish; ``check_partial`` inspects the state after each kill."""
    logs.mkdir(parents=True, exist_ok=True)
    first, second = _kill_points(stage, ref_events, seed)
    plan = [{"kill_at": first}, {"kill_at": second}, *({"kill_on": m} for m in markers)]
    results = []
    for attempt, kill in enumerate(plan):
        result = cleanface(args if attempt == 0 else rerun_args, log=logs / f"cut{attempt}.log", **kill)
        results.append(result)
        if result.killed:
            check_partial(result)
        else:  # the re-run had fewer events left than drawn: it finished
            assert result.returncode == 0, result.output
    where = [r.events[-1] if r.killed else "(finished)" for r in results]
    assert results[0].killed and results[0].events[-1] == ref_events[first - 1], where
    for marker in markers:
        assert any(r.killed and r.events[-1] == marker for r in results), f"never killed at {marker!r}: {where}"
    final = cleanface(rerun_args, log=logs / "final.log")
    assert final.returncode == 0, final.output
    results.append(final)
    return results


def _no_temporaries(root: Path) -> None:
    stray = [p for p in root.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".partial") or ".old-" in p.name]
    assert stray == [], f"left behind: {stray}"


def _files(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def _readable(root: Path) -> None:
    """Every JSON and checkpoint file in ``root`` reads back whole (atomic writes)."""
    for path in root.rglob("*.json"):
        json.loads(path.read_text())
    for path in root.rglob("*.pt"):
        checkpoint.load(path)


# -- training ---------------------------------------------------------------------------------------
def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(run / "model.pt")
    return {**{f"backbone.{k}": v for k, v in state["backbone"].items()}, **{f"head.{k}": v for k, v in state["head"].items()}}


def _logged_steps(run: Path) -> list[tuple[int, float]]:
    """(step, learning rate) of every metrics row. The loss of the first row after a resume averages only
    the steps since the checkpoint, so losses are compared through the weights, not through this log."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in rows]


@pytest.mark.parametrize(("command", "extra"), [("train-subcenter", ["--k", "2"]), ("train-final", ["--loss", "elastic-arc+"])])
def test_killed_training_resumes_to_the_weights_of_an_uninterrupted_run(tiny_faces, sub_ref, tmp_path, command, extra):
    if command == "train-subcenter":
        ref_run, ref_events = sub_ref
    else:
        ref_run = tmp_path / "ref" / "run"
        ref = cleanface(train_args(command, tiny_faces, ref_run, tmp_path / "ref" / "cache", extra), log=tmp_path / "ref.log")
        assert ref.returncode == 0, ref.output
        ref_events = ref.events
    assert ref_events.count("train step") == 9

    run = tmp_path / "cut" / "run"
    args = train_args(command, tiny_faces, run, tmp_path / "cut" / "cache", extra)

    def check_partial(result: Result) -> None:
        assert not (run / "COMPLETE").exists(), f"killed at {result.events[-1]!r} yet marked complete"
        if run.exists():
            _readable(run)

    _chain(command, args, [*args, "--resume"], ref_events, tmp_path / "logs", check_partial, markers=["replace COMPLETE"])
    assert (run / "COMPLETE").is_file()
    a, b = _weights(ref_run), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _logged_steps(run) == _logged_steps(ref_run)
    _no_temporaries(run)
    _no_temporaries(tmp_path / "cut" / "cache")


# -- embed and purify -----------------------------------------------------------------------------
def test_killed_embed_resumes_to_identical_bytes(sub_run, tiny_faces, tmp_path):
    ref_out = tmp_path / "ref" / "emb"
    ref = cleanface(["embed", sub_run, tiny_faces, "--out", ref_out, "--silent"], log=tmp_path / "ref.log")
    assert ref.returncode == 0, ref.output
    assert ref.events.count("embed chunk") == 3

    out = tmp_path / "cut" / "emb"
    args = ["embed", sub_run, tiny_faces, "--out", out, "--silent"]

    def check_partial(result: Result) -> None:
        if (out / "embeddings.json").exists():  # the completion mark: then the array must be whole
            assert (out / "embeddings.npy").read_bytes() == (ref_out / "embeddings.npy").read_bytes()
        elif out.exists():
            refused = cleanface(["purify", sub_run, tiny_faces, "--out", tmp_path / "never", "--embeddings", out, "--silent"])
            assert refused.returncode == 1 and "Traceback" not in refused.output, refused.output
            assert "embeddings.json" in refused.output
            assert not (tmp_path / "never").exists()

    _chain("embed", args, args, ref.events, tmp_path / "logs", check_partial, markers=["replace embeddings.json"])
    assert _files(out) == _files(ref_out)
    _no_temporaries(out)


def test_killed_purify_resumes_to_identical_bytes(sub_run, tiny_faces, tmp_path):
    out = tmp_path / "work" / "clean"
    args = ["purify", sub_run, tiny_faces, "--out", out, "--silent", "--format", "manifest", "--rounds", "2"]
    ref = cleanface(args, log=tmp_path / "ref.log")
    assert ref.returncode == 0, ref.output
    assert ref.events.index("replace clean") < ref.events.index("replace report")  # the report is rendered once the output is complete
    ref_out = tmp_path / "reference"
    out.rename(ref_out)  # the interrupted runs write to the same path, so even the report (which names it) must match

    def check_partial(result: Result) -> None:
        # the output appears in one rename, complete, or not at all
        assert not out.exists(), f"killed at {result.events[-1]!r} yet {out} exists"

    _chain("purify", args, args, ref.events[: ref.events.index("replace clean") + 1], tmp_path / "logs", check_partial, markers=["replace clean"])
    assert (out / "COMPLETE").is_file()
    timed = ("run_info.json", "metrics.jsonl", "train_summary.json")  # wall-clock fields (the second round's training logs them)
    ref_files, files = _files(ref_out, skip=timed), _files(out, skip=timed)
    assert sorted(files) == sorted(ref_files)
    assert len(files) > 30 and "report/index.html" in files and "manifest.csv" in files
    assert "rounds/run-2/model.pt" in files and "rounds/round-1/decisions.csv" in files  # two rounds, resumed too
    for name in ref_files:
        assert files[name] == ref_files[name], name
    _no_temporaries(out)
    _no_temporaries(out.parent)
    decisions = np.loadtxt(out / "decisions.csv", delimiter=",", skiprows=1, usecols=0, dtype=int)
    assert sorted(decisions) == list(range(48))  # a decision for every input image


def test_purify_killed_while_rendering_its_report_keeps_a_complete_output(sub_run, tiny_faces, tmp_path):
    out = tmp_path / "clean"
    args = ["purify", sub_run, tiny_faces, "--out", out, "--silent"]
    killed = cleanface(args, log=tmp_path / "cut.log", kill_on="replace report")
    assert killed.killed and (out / "COMPLETE").is_file() and not (out / "report").exists()
    again = cleanface(args, log=tmp_path / "again.log")  # the same command says what to do, and changes nothing
    assert again.returncode == 1 and f"cleanface report {out}" in again.output and "Traceback" not in again.output
    done = cleanface(["report", out, "--silent"], log=tmp_path / "report.log")
    assert done.returncode == 0, done.output
    assert (out / "report" / "index.html").is_file()
    _no_temporaries(out)


# -- what a killed writer leaves behind ---------------------------------------------------------------
def test_leftovers_of_dead_writers_are_cleared_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from cleanface._atomic import atomic_write_json, staging_dir

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, live = gone.pid, os.getppid()
    (tmp_path / f".x.json.tmp-{dead}").write_bytes(b"half a file")
    (tmp_path / f".x.json.tmp-{live}").write_bytes(b"another writer, still running")
    (tmp_path / f".y.json.tmp-{dead}").write_bytes(b"not this target's")
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", f".x.json.tmp-{live}", f".y.json.tmp-{dead}"])

    out = tmp_path / "out"
    out.mkdir()
    (out / "COMPLETE").write_text("{}")
    trash = tmp_path / f".out.old-{dead}"  # killed between the two renames of an earlier overwrite
    trash.mkdir()
    (trash / "COMPLETE").write_text("{}")
    with staging_dir(out, overwrite=True) as stage:
        (stage / "COMPLETE").write_text('{"new": true}')
    assert json.loads((out / "COMPLETE").read_text()) == {"new": True}
    assert not trash.exists() and not any(".old-" in p.name or ".partial" in p.name for p in tmp_path.iterdir())
