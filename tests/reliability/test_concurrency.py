"""Two runs on one output directory: the second is refused, naming the first; dead holders are taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cleanface._atomic import RunLock
from cleanface.errors import LockError
from tests.reliability.conftest import REPO, TRAIN, Result, Started, cleanface, start

pytestmark = pytest.mark.slow


def _wait_stopped(proc: Started, timeout: float = 120) -> None:
    """Wait until ``proc`` has stopped itself (SIGSTOP at its chosen event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = proc.state()
        if state == "T":
            return
        if state in ("Z", "gone"):
            result = proc.wait()
            raise AssertionError(f"the first run ended (status {result.returncode}) before its stop point: {result.output}")
        time.sleep(0.05)
    raise AssertionError("the first run did not reach its stop point")


def _finish(proc: Started) -> Result:
    os.kill(proc.pid, signal.SIGCONT)
    result = proc.wait()
    assert result.returncode == 0, result.output
    return result


def _one_line_refusal(result, pid: int) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.returncode == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"in use by process {pid}" in lines[0], lines[0]
    return lines[0]


def _holder(lock_dir: Path, *, host: str | None = None) -> subprocess.Popen:
    """A separate live process that takes the lock and keeps it until its stdin closes."""
    code = textwrap.dedent(f"""
        import socket, sys
        if {host!r} is not None:
            socket.gethostname = lambda: {host!r}
        from cleanface._atomic import RunLock
        lock = RunLock({str(lock_dir)!r}).acquire()
        print("held", flush=True)
        sys.stdin.read()
        lock.release()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


# -- two real cleanface processes ------------------------------------------------------------------
def test_a_second_training_run_is_refused_and_cannot_delete_the_first(tiny_faces, tmp_path):
    run = tmp_path / "run"
    args = ["train-subcenter", tiny_faces, "--out", run, *TRAIN, "--epochs", "2", "--k", "2", "--cache-dir", tmp_path / "cache"]
    first = start(args, tmp_path, stop_at=10)  # stopped in its training loop (before its second step), lock held
    try:
        _wait_stopped(first)
        assert first.log.read_text().splitlines()[-1].endswith("train step")
        assert (run / RunLock.NAME).is_file() and (run / "config.json").is_file()
        before = sorted(p.name for p in run.iterdir())
        _one_line_refusal(cleanface([*args, "--resume"]), first.pid)
        _one_line_refusal(cleanface([*args, "--overwrite"]), first.pid)
        assert sorted(p.name for p in run.iterdir()) == before  # --overwrite deleted nothing of the live run
    finally:
        _finish(first)
    assert (run / "COMPLETE").is_file() and not (run / RunLock.NAME).exists()
    again = cleanface([*args, "--resume"])  # now free: a finished run is returned as it is
    assert again.returncode == 0, again.output


def test_a_second_purify_to_the_same_output_is_refused(tiny_faces, sub_run, tmp_path):
    out = tmp_path / "clean"
    args = ["purify", sub_run, tiny_faces, "--out", out, "--silent"]
    first = start(args, tmp_path, stop_at=8)  # stopped between embedding and writing the cleaned dataset
    try:
        _wait_stopped(first)
        assert "embed chunk" in first.log.read_text() and not out.exists()
        _one_line_refusal(cleanface(args), first.pid)
    finally:
        _finish(first)
    assert (out / "COMPLETE").is_file()
    decisions = (out / "decisions.csv").read_text().splitlines()
    assert len(decisions) == 1 + 48


# -- a lock held by another live process, then by a dead one ----------------------------------------
def test_embed_and_pipeline_refuse_a_live_holder_and_take_over_a_dead_one(tiny_faces, sub_run, tmp_path):
    emb = tmp_path / "emb"
    holder = _holder(emb)
    try:
        _one_line_refusal(cleanface(["embed", sub_run, tiny_faces, "--out", emb, "--silent"]), holder.pid)
        assert not (emb / "embeddings.npy").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock: the file stays behind
        holder.wait()
    assert json.loads((emb / RunLock.NAME).read_text())["pid"] == holder.pid
    done = cleanface(["embed", sub_run, tiny_faces, "--out", emb, "--silent"])
    assert done.returncode == 0, done.output
    assert (emb / "embeddings.json").is_file() and not (emb / RunLock.NAME).exists()

    workdir = tmp_path / "pipe"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('name = "p"\n[[stage]]\nname = "data"\nkind = "make-synthetic"\nidentities = 2\nper_identity = 2\nsize = 16\n')
    holder = _holder(workdir)
    try:
        _one_line_refusal(cleanface(["run", pipeline, "--workdir", workdir, "--silent"]), holder.pid)
        assert not (workdir / "data").exists()
    finally:
        _release(holder)


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tmp_path / RunLock.NAME).write_text(json.dumps({"pid": proc.pid, "host": os.uname().nodename}))
    with RunLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / RunLock.NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / RunLock.NAME).exists()
    (tmp_path / RunLock.NAME).write_text("")  # killed between creating the file and writing its pid
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_a_live_holder_on_another_host_is_not_taken_over(tmp_path):
    """On a shared filesystem the pid of another machine says nothing here: the lock itself must decide."""
    holder = _holder(tmp_path, host="another-machine")
    try:
        with pytest.raises(LockError, match=f"in use by process {holder.pid} on another-machine"):
            RunLock(tmp_path).acquire()
    finally:
        _release(holder)
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_simultaneous_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    lock_dir, tried = tmp_path / "out", tmp_path / "tried"
    lock_dir.mkdir()
    tried.mkdir()
    (lock_dir / RunLock.NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    go = time.time() + 1.0
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from cleanface._atomic import RunLock
        from cleanface.errors import LockError
        while time.time() < {go}:
            pass
        try:
            lock = RunLock({str(lock_dir)!r}).acquire()
        except LockError:
            lock = None
        Path({str(tried)!r}, str(os.getpid())).touch()
        print("refused" if lock is None else "held", flush=True)
        deadline = time.time() + 60
        while lock is not None and len(os.listdir({str(tried)!r})) < 4 and time.time() < deadline:
            time.sleep(0.02)  # the winner keeps the lock until every process has tried
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=90)[0].strip() for p in procs)
    assert outcomes == ["held", "refused", "refused", "refused"]


def test_nested_use_in_one_process_keeps_the_outer_lock(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path):
            pass
        assert (tmp_path / RunLock.NAME).is_file()  # the inner release must not free the outer lock
        holder_code = f"from cleanface._atomic import RunLock; RunLock({str(tmp_path)!r}).acquire()"
        other = subprocess.run([sys.executable, "-c", holder_code], cwd=REPO, capture_output=True, text=True)
        assert other.returncode != 0 and "in use by process" in other.stderr
