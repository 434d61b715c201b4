"""Two training processes under torchrun (gloo on CPU): the ranks end with identical backbones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cleanface.data.open import open_dataset
from cleanface.training import checkpoint
from cleanface.inference.embed import embed_index
from cleanface.inference.run import load_run


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_two_processes_train_one_model(faces, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLEANFACE_CACHE": str(tmp_path / "cache")}
    two = [*_torchrun(), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "cleanface_cli.main"]
    cmd = [*two, "train-subcenter", str(faces), "--out", str(run), "--device", "cpu", "--input-size", "32", "--embedding-size", "32",
           "--batch-size", "8", "--epochs", "2", "--lr", "0.05", "--cache-dir", str(tmp_path / "cache"), "--silent"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # every process ends with status 0 (no SIGABRT at exit)
    summary = json.loads((run / "train_summary.json").read_text())
    hashes = summary["backbone_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 16
    # each rank kept its own shard of the class weights; the saved head holds all of them
    rank1 = checkpoint.load(run / "checkpoints" / "last.rank1.pt")
    rank0 = checkpoint.load(run / "checkpoints" / "last.pt")
    assert rank0["head"]["weight"].shape[0] + rank1["head"]["weight"].shape[0] == 8 * 3
    loaded = load_run(run)
    assert loaded.head.class_centers().shape == (8, 3, 32)
    full = loaded.head.weight.detach()
    assert torch.equal(full[: rank0["head"]["weight"].shape[0]], rank0["head"]["weight"])
    params = dict(loaded.backbone.named_parameters())  # the last checkpoints precede the final sync of BatchNorm statistics
    assert params and all(torch.equal(p, rank0["backbone"][k]) and torch.equal(p, rank1["backbone"][k]) for k, p in params.items())

    # each process embeds a shard, rank 0 merges them: the same embeddings as one process
    done = subprocess.run([*two, "embed", str(run), str(faces), "--out", str(tmp_path / "emb"), "--dtype", "float32", "--silent"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = embed_index(loaded.backbone, open_dataset(faces), tmp_path / "emb1", size=32, crop=None, dtype="float32", silent=True)
    np.testing.assert_allclose(np.load(tmp_path / "emb" / "embeddings.npy"), single, atol=1e-5)
