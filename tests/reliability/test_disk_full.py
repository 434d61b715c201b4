"""A full disk (ENOSPC injected into the writers): the previous good state stays, the failure is one clear line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cleanface.data.recordio as recordio
from cleanface.errors import CleanfaceError
from cleanface.training import checkpoint
from cleanface.training.trainer import train_subcenter
from cleanface_cli.main import cli
from tests.reliability.conftest import SIZE


def _fsync_fails_for(monkeypatch, name: str, *, after: int = 0) -> list[str]:
    """Make ``os.fsync`` fail with ENOSPC for the temporary file of ``name`` once ``after`` earlier ones succeeded."""
    real = os.fsync
    seen: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(path).startswith(f".{name}.tmp-"):
            seen.append(path)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "no space left on device" in lines[0], lines[0]
    return lines[0]


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_good_one(tiny_faces, tmp_path, monkeypatch):
    settings = {"input_size": SIZE, "embedding_size": 16, "batch_size": 16, "epochs": 3, "checkpoint_every": 2, "silent": True,
                "device": "cpu", "cache_dir": str(tmp_path / "cache"), "k": 2}
    whole = train_subcenter(tiny_faces, tmp_path / "whole", **settings)
    seen = _fsync_fails_for(monkeypatch, "last.pt", after=2)  # checkpoints at steps 2, 3, then 4 fails
    with pytest.raises(CleanfaceError, match=r"no space left on device while writing .*last\.pt; the previous version is intact"):
        train_subcenter(tiny_faces, tmp_path / "full", **settings)
    monkeypatch.undo()
    assert len(seen) == 3
    run = tmp_path / "full"
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 3
    assert not (run / "COMPLETE").exists() and not (run / "model.pt").exists()
    assert [p.name for p in run.rglob(".*.tmp-*")] == []
    resumed = train_subcenter(tiny_faces, run, resume=True, **settings)  # space freed: the run goes on
    a, b = checkpoint.load(whole / "model.pt"), checkpoint.load(resumed / "model.pt")
    for part in ("backbone", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_purify_on_a_full_disk_leaves_the_previous_output_whole(sub_run, tiny_faces, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "clean"
    first = runner.invoke(cli, ["purify", str(sub_run), str(tiny_faces), "--out", str(out), "--silent"])
    assert first.exit_code == 0, first.output
    before = _tree(out)
    _fsync_fails_for(monkeypatch, "decisions.csv")
    again = runner.invoke(cli, ["purify", str(sub_run), str(tiny_faces), "--out", str(out), "--silent", "--overwrite", "--threshold", "60"])
    line = _one_line(again)
    assert "decisions.csv" in line and "intact" in line
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if ".old-" in p.name or p.name.endswith(".lock")] == []


def test_disk_full_outside_atomic_files_is_one_line_too(sub_run, tiny_faces, tmp_path, monkeypatch):
    runner = CliRunner()
    # the embeddings array is a memory map created in place
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "emb" / "embeddings.npy"))

    monkeypatch.setattr(np.lib.format, "open_memmap", no_space)
    result = runner.invoke(cli, ["embed", str(sub_run), str(tiny_faces), "--out", str(tmp_path / "emb"), "--silent"])
    assert "embeddings.npy" in _one_line(result)
    assert not (tmp_path / "emb" / "embeddings.json").exists()
    monkeypatch.undo()

    # a RecordIO conversion over an existing good one
    good = runner.invoke(cli, ["convert", str(tiny_faces), str(tmp_path / "rec"), "--format", "rec", "--silent"])
    assert good.exit_code == 0, good.output
    before = _tree(tmp_path / "rec")
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(".rec") and "w" in mode:
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return handle

    monkeypatch.setattr(recordio, "open", full_open, raising=False)
    result = runner.invoke(cli, ["convert", str(tiny_faces), str(tmp_path / "rec"), "--format", "rec", "--silent", "--overwrite"])
    _one_line(result)
    assert _tree(tmp_path / "rec") == before
