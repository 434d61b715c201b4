"""``--init PATH``: pretrained backbones (arcface_torch layout, cleanface runs) and the head's class-mean start."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cleanface.data.images import decode_image
from cleanface.data.open import open_dataset
from cleanface.errors import CheckpointError, ConfigError
from cleanface.inference.embed import embed_arrays
from cleanface.models import create_backbone
from cleanface.training import init as pretrained
from cleanface.training import trainer as trainer_module
from cleanface.training.trainer import train, train_final, train_subcenter
from cleanface_cli.main import cli

from tests.training.conftest import SIZE

R_SIZE = 16  # the smallest iResNet input: the 32x32 faces decoded at 16x16 keep these tests fast
R18 = {"backbone": "iresnet18", "input_size": R_SIZE, "embedding_size": 32}


def _arcface_torch_file(path: Path, *, name: str = "iresnet18", dim: int = 32, prefix: str = "", seed: int = 1, drop: str | None = None) -> Path:
    """A ``backbone.pth`` as arcface_torch writes it: ``torch.save`` of the iResNet's OrderedDict state, trained-looking statistics."""
    torch.manual_seed(seed)
    model = create_backbone(name, embedding_size=dim, input_size=R_SIZE)
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            value = torch.rand_like(value) + 0.5  # not the fresh-model values, so equality below means "loaded"
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn_like(value)
        elif key.endswith("num_batches_tracked"):
            value = torch.tensor(1234)
        if key != drop:
            state[prefix + key] = value
    torch.save(state, path)
    return path


@pytest.fixture
def first_step(monkeypatch) -> dict:
    """Backbone state and sub-centers as the first optimiser step finds them."""
    seen: dict = {}
    original = trainer_module._Trainer._step

    def spy(self, x, y, lr):
        if not seen:
            seen["backbone"] = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
            seen["centers"] = self.local_head.class_centers().clone()
        return original(self, x, y, lr)

    monkeypatch.setattr(trainer_module._Trainer, "_step", spy)
    return seen


class _Stop(Exception):
    pass


def _stop(step: int) -> None:
    raise _Stop


def _class_means(model: torch.nn.Module, faces: Path) -> torch.Tensor:
    index = open_dataset(faces)
    images = np.stack([decode_image(index.read_bytes(i), size=R_SIZE, crop=None) for i in range(len(index))])
    emb = torch.from_numpy(embed_arrays(model, images, flip=True))
    sums = torch.zeros(len(index.names), emb.shape[1]).index_add_(0, torch.from_numpy(index.labels), emb)
    return torch.nn.functional.normalize(sums, dim=1)


def test_an_arcface_torch_backbone_starts_the_training(faces, fast, tmp_path, first_step):
    file = _arcface_torch_file(tmp_path / "backbone.pth", prefix="module.")  # saved from a DDP-wrapped model
    run = train_subcenter(faces, tmp_path / "run", k=3, init=str(file), **{**fast, **R18, "epochs": 1})
    saved = {k[len("module."):]: v for k, v in torch.load(file, weights_only=True).items()}
    assert set(first_step["backbone"]) == set(saved)
    assert all(torch.equal(first_step["backbone"][k], v) for k, v in saved.items())  # buffers (BN statistics) included
    assert (run / "COMPLETE").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(file) and config["settings"]["init"] == str(file)
    source = config["init_source"]
    assert source["kind"] == "state dict" and source["prefix"] == "module." and source["head"]["classes_set"] == 8 and source["head"]["images"] == 80


def test_the_subcenters_start_at_the_class_means(faces, fast, tmp_path, first_step):
    file = _arcface_torch_file(tmp_path / "backbone.pth")
    with pytest.raises(_Stop):  # only the start matters here
        train_subcenter(faces, tmp_path / "run", k=3, init=str(file), on_step=_stop, **{**fast, **R18, "epochs": 1})
    model = create_backbone("iresnet18", embedding_size=32, input_size=R_SIZE)
    model.load_state_dict(torch.load(file, weights_only=True))
    means = _class_means(model, faces)
    centers = first_step["centers"]  # (C, K, D), normalised
    cos = torch.einsum("ckd,cd->ck", centers, means)
    assert cos.shape == (8, 3) and bool((cos > 0.9).all()), cos
    assert not torch.allclose(centers[:, 0], centers[:, 1])  # the sub-centers differ: the perturbations break the tie
    # K=1 heads (ElasticFace): the normalised class mean itself
    first_step.clear()
    with pytest.raises(_Stop):
        train_final(faces, tmp_path / "final", loss="elastic-arc+", init=str(file), on_step=_stop, **{**fast, **R18, "epochs": 1})
    cos1 = torch.einsum("ckd,cd->ck", first_step["centers"], means)
    assert cos1.shape == (8, 1) and bool((cos1 > 0.999).all()), cos1


def test_without_init_the_head_is_random(faces, fast, tmp_path, first_step):
    run = train_subcenter(faces, tmp_path / "run", k=3, **{**fast, "epochs": 1})
    assert json.loads((run / "config.json").read_text())["init"] is None
    centers = first_step["centers"]
    assert float((centers[:, 0] * centers[:, 1]).sum(1).abs().mean()) < 0.5  # random rows: nearly orthogonal sub-centers


def _error(call) -> str:
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_files_that_do_not_fit_are_one_clear_line(faces, fast, tmp_path):
    kw = {**fast, **R18, "epochs": 1}
    wide = _arcface_torch_file(tmp_path / "wide.pth", dim=64)
    msg = _error(lambda: train_subcenter(faces, tmp_path / "a", init=str(wide), **kw))
    assert msg.startswith(f"{wide} does not fit iresnet18 (32-d, 16x16): fc.weight is (64, 512) in the file, (32, 512) in the model")
    holed = _arcface_torch_file(tmp_path / "holed.pth", drop="layer2.0.conv1.weight")
    msg = _error(lambda: train_subcenter(faces, tmp_path / "b", init=str(holed), **kw))
    assert "layer2.0.conv1.weight (128, 64, 3, 3) is missing from the file" in msg
    deeper = _arcface_torch_file(tmp_path / "r34.pth", name="iresnet34")
    msg = _error(lambda: train_subcenter(faces, tmp_path / "c", init=str(deeper), **kw))
    assert "the file has layer1.2.bn1.weight (64,), which the model lacks" in msg and "looks like iresnet34 (32-d, 16x16)" in msg
    # through the CLI: exit status 1, the same line, no traceback
    args = ["train-subcenter", str(faces), "--out", str(tmp_path / "d"), "--init", str(wide), "--backbone", "iresnet18", "--input-size", str(R_SIZE),
            "--embedding-size", "32", "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--cache-dir", fast["cache_dir"], "--silent"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "fc.weight is (64, 512) in the file, (32, 512) in the model" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "d" / "config.json").exists()


def test_a_cleanface_run_starts_the_training(faces, fast, tmp_path, first_step):
    source = train_subcenter(faces, tmp_path / "src", k=2, **{**fast, "epochs": 1})
    first_step.clear()
    run = train_final(faces, tmp_path / "final", loss="arcface", init=str(source), **{**fast, "epochs": 1})
    model = torch.load(source / "model.pt", weights_only=True)["backbone"]
    assert all(torch.equal(first_step["backbone"][k], v) for k, v in model.items())
    assert json.loads((run / "config.json").read_text())["init_source"]["kind"] == "cleanface model"
    # another architecture is told which settings would fit the run
    msg = _error(lambda: train_final(faces, tmp_path / "other", init=str(source), **{**fast, **R18, "epochs": 1}))
    assert msg.startswith(f"{source} does not fit iresnet18 (32-d, 16x16): ")
    assert "the file is a cleanface compact (32-d, 32x32) model: train with --backbone compact --embedding-size 32 --input-size 32" in msg
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    assert "the run is not finished" in _error(lambda: train_final(faces, tmp_path / "x", init=str(unfinished), **fast))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_file_carrying_pickled_code_is_refused(faces, fast, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Payload()}, bad)
    msg = _error(lambda: train_subcenter(faces, tmp_path / "run", init=str(bad), **fast))
    assert "refused" in msg and "not plain weights data" in msg
    assert not (tmp_path / "pwned").exists()


def test_resume_keeps_the_checkpoint_and_ends_like_an_uninterrupted_run(faces, fast, tmp_path):
    source = train_subcenter(faces, tmp_path / "src", k=2, **{**fast, "epochs": 1})
    file = tmp_path / "init.pt"
    file.write_bytes((source / "model.pt").read_bytes())
    kw = {**fast, "epochs": 2}
    whole = train_subcenter(faces, tmp_path / "whole", init=str(file), **kw)

    def stop(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_subcenter(faces, tmp_path / "cut", init=str(file), on_step=stop, **kw)
    file.write_bytes(b"not a checkpoint any more")  # the checkpoint wins: the file is not read again
    cut = train_subcenter(faces, tmp_path / "cut", init=str(file), resume=True, **kw)
    a, b = torch.load(whole / "model.pt", weights_only=True), torch.load(cut / "model.pt", weights_only=True)
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"]) and torch.equal(a["head"]["weight"], b["head"]["weight"])
    assert json.loads((cut / "config.json").read_text())["init_source"]["head"]["classes_set"] == 8


def test_prefixes_containers_and_settings():
    w = torch.zeros(2)
    assert pretrained.strip_prefixes({"module.backbone.a": w, "module.backbone.b": w}) == ({"a": w, "b": w}, "module.backbone.")
    assert pretrained.strip_prefixes({"backbone.a": w, "head.weight": w}) == ({"a": w}, "backbone.")
    assert pretrained.strip_prefixes({"a": w}) == ({"a": w}, "")
    with pytest.raises(ConfigError, match="init must be a path"):
        train("x", "y", init=3)


def test_an_arcface_torch_resume_checkpoint_and_odd_files(tmp_path):
    state = {"conv1.weight": torch.ones(2)}
    torch.save({"epoch": 3, "global_step": 10, "state_dict_backbone": state, "state_dict_softmax_fc": {"weight": torch.ones(3)}}, tmp_path / "ckpt.pt")
    weights = pretrained.read_init(tmp_path / "ckpt.pt")
    assert weights.kind == "state_dict_backbone of a checkpoint" and set(weights.state) == {"conv1.weight"}
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    assert "holds no backbone weights" in _error(lambda: pretrained.read_init(tmp_path / "empty.pt"))
    assert "does not exist" in _error(lambda: pretrained.read_init(tmp_path / "nothing.pth"))
    nan = create_backbone("compact", embedding_size=8, input_size=SIZE)
    state = {k: v.clone() for k, v in nan.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][...] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    assert "non-finite" in _error(lambda: pretrained.check_fits(pretrained.read_init(tmp_path / "nan.pt"), nan, "compact"))


def test_perturbations_do_not_depend_on_the_sharding():
    whole = pretrained.jitter(5, 0, 3000, 3, 16)
    assert torch.equal(pretrained.jitter(5, 1500, 1500, 3, 16), whole[1500:])
    assert torch.equal(pretrained.jitter(5, 1000, 24, 3, 16), whole[1000:1024])
    assert not torch.equal(pretrained.jitter(6, 0, 3000, 3, 16), whole)
    assert float(whole.norm(dim=2).mean()) == pytest.approx(pretrained.SUBCENTER_JITTER, rel=0.1)


def test_each_shard_of_the_head_starts_as_the_whole_head_would(faces):
    """Under torchrun each rank sets only its class shard; the rows equal those of one process setting all classes."""
    from cleanface.losses import create_head

    index = open_dataset(faces)
    torch.manual_seed(0)
    model = create_backbone("compact", embedding_size=16, input_size=SIZE)
    images = lambda ids: pretrained.read_images(index, ids, cache=None, size=SIZE, crop=None)  # noqa: E731
    samples = np.arange(len(index))
    heads = []
    for start, count in ((0, 8), (0, 3), (3, 5)):
        torch.manual_seed(1)
        head = create_head("subcenter-arcface", 16, count, k=3)
        info = pretrained.init_head(head, model, images, samples, index.labels, class_start=start, seed=4)
        assert info["classes_set"] == count and info["images"] == 10 * count
        heads.append(head.class_centers())
    torch.testing.assert_close(torch.cat(heads[1:]), heads[0], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_processes_start_from_the_same_file(faces, tmp_path):
    import subprocess
    import sys

    torch.manual_seed(3)
    file = tmp_path / "backbone.pth"
    torch.save(create_backbone("compact", embedding_size=32, input_size=SIZE).state_dict(), file)
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLEANFACE_CACHE": str(tmp_path / "cache")}
    cmd = [*launcher, "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "cleanface_cli.main", "train-subcenter", str(faces),
           "--out", str(tmp_path / "run"), "--init", str(file), "--device", "cpu", "--input-size", str(SIZE), "--embedding-size", "32",
           "--batch-size", "8", "--epochs", "1", "--lr", "0.05", "--cache-dir", str(tmp_path / "cache"), "--silent", "--no-report"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    head = json.loads((tmp_path / "run" / "config.json").read_text())["init_source"]["head"]
    assert head["classes_set"] == 8 and head["images"] == 80  # the two shards together
    hashes = json.loads((tmp_path / "run" / "train_summary.json").read_text())["backbone_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
