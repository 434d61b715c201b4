"""The trainer: run directory, resume to equal weights, refusals, non-finite loss, learning."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from cleanface.errors import CheckpointError, ConfigError, DataError, TrainingError
from cleanface.training import checkpoint
from cleanface.inference.run import load_run
from cleanface.training.trainer import train, train_final, train_subcenter


class Stop(Exception):
    """Raised by a step hook to simulate an interruption."""


def stop_at(n: int):
    def hook(step: int) -> None:
        if step == n:
            raise Stop

    return hook


def weights(run) -> dict[str, torch.Tensor]:
    state = checkpoint.load(run / "model.pt")
    return {**{f"b.{k}": v for k, v in state["backbone"].items()}, **{f"h.{k}": v for k, v in state["head"].items()}}


def metric_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_holds_everything(faces, fast, tmp_path):
    run = train_subcenter(faces, tmp_path / "run", k=3, **fast)
    for name in ("config.json", "identities.txt", "model.pt", "metrics.jsonl", "train_summary.json", "COMPLETE", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert not (run / "report").exists()  # the library renders no report: the CLI and the pipeline do
    config = json.loads((run / "config.json").read_text())
    assert config["head"] == "subcenter-arcface" and config["k"] == 3 and config["num_classes"] == 8
    assert config["settings"]["momentum"] == 0.9 and config["settings"]["weight_decay"] == 5e-4
    rows = metric_rows(run)
    assert [r["step"] for r in rows] == list(range(1, config["total_steps"] + 1))
    assert set(rows[0]) == {"step", "epoch", "loss", "acc", "lr", "images_per_s", "elapsed_s"}
    loaded = load_run(run)
    assert loaded.head.class_centers().shape == (8, 3, 32)
    assert loaded.names == (run / "identities.txt").read_text().splitlines()
    assert not loaded.backbone.training


def test_learning_rate_warms_up_then_decays(faces, fast, tmp_path):
    run = train(faces, tmp_path / "run", head="arcface", warmup_epochs=1.0, **fast)
    lrs = [r["lr"] for r in metric_rows(run)]
    per_epoch = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    assert lrs[:per_epoch] == sorted(lrs[:per_epoch]) and lrs[per_epoch - 1] == pytest.approx(fast["lr"])
    assert lrs[per_epoch:] == sorted(lrs[per_epoch:], reverse=True) and lrs[-1] < lrs[per_epoch]


def test_interrupted_run_resumes_to_identical_weights(faces, fast, tmp_path):
    settings = {**fast, "checkpoint_every": 2}
    whole = train_subcenter(faces, tmp_path / "whole", **settings)
    with pytest.raises(Stop):
        train_subcenter(faces, tmp_path / "cut", on_step=stop_at(7), **settings)  # mid-epoch, one step after a checkpoint
    assert checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 6
    assert not (tmp_path / "cut" / "COMPLETE").exists() and not (tmp_path / "cut" / "model.pt").exists()
    resumed = train_subcenter(faces, tmp_path / "cut", resume=True, **settings)
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in metric_rows(resumed)] == [r["step"] for r in metric_rows(whole)]
    assert [r["loss"] for r in metric_rows(resumed)] == [r["loss"] for r in metric_rows(whole)]


def test_elastic_final_run_resumes_identically_too(faces, fast, tmp_path):
    """ElasticFace draws random margins every step: the restored generator state must replay them."""
    settings = {**fast, "epochs": 2}
    whole = train_final(faces, tmp_path / "whole", loss="elastic-arc+", **settings)
    with pytest.raises(Stop):
        train_final(faces, tmp_path / "cut", loss="elastic-arc+", on_step=stop_at(6), **settings)
    resumed = train_final(faces, tmp_path / "cut", loss="elastic-arc+", resume=True, **settings)
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_returned_on_resume_and_refused_otherwise(faces, fast, tmp_path):
    run = train_subcenter(faces, tmp_path / "run", **fast)
    stamp = (run / "model.pt").stat().st_mtime_ns
    assert train_subcenter(faces, run, resume=True, **fast) == run
    assert (run / "model.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="not empty"):
        train_subcenter(faces, run, **fast)
    with pytest.raises(ConfigError, match="other settings.*lr"):
        train_subcenter(faces, run, resume=True, **{**fast, "lr": 0.2})
    train_subcenter(faces, run, overwrite=True, **{**fast, "epochs": 1})
    assert json.loads((run / "config.json").read_text())["settings"]["epochs"] == 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(faces, fast, tmp_path):
    state = {}

    def poison(step: int) -> None:
        if step == 4:
            head = state["head"]
            with torch.no_grad():
                head.weight.fill_(float("nan"))

    import cleanface.training.trainer as trainer_module

    original = trainer_module._Trainer._models

    def capture(self):
        original(self)
        state["head"] = self.local_head

    trainer_module._Trainer._models = capture
    try:
        with pytest.raises(TrainingError, match="loss became nan.*last good checkpoint"):
            train_subcenter(faces, tmp_path / "run", checkpoint_every=2, on_step=poison, **fast)
    finally:
        trainer_module._Trainer._models = original
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
    assert not (tmp_path / "run" / "model.pt").exists()


def test_loss_falls_and_training_accuracy_rises(faces, fast, tmp_path):
    run = train(faces, tmp_path / "run", head="arcface", margin=0.2, scale=16.0, **{**fast, "epochs": 8, "lr": 0.1, "log_every": 5})
    rows = metric_rows(run)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert rows[-1]["acc"] > rows[0]["acc"] + 0.3


def test_checkpoint_from_another_dataset_is_refused(faces, fast, tmp_path):
    from cleanface.data.synthetic import make_synthetic

    other = make_synthetic(tmp_path / "other", identities=5, per_identity=10, size=32, seed=3, silent=True)
    with pytest.raises(Stop):
        train_subcenter(other, tmp_path / "a", on_step=stop_at(3), checkpoint_every=1, **fast)
    with pytest.raises(Stop):
        train_subcenter(faces, tmp_path / "b", on_step=stop_at(1), checkpoint_every=1, **fast)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.pt", tmp_path / "b" / "checkpoints" / "last.pt")
    with pytest.raises(TrainingError, match="another dataset"):
        train_subcenter(faces, tmp_path / "b", resume=True, **fast)


def test_checkpoints_are_data_not_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"backbone": Payload()}))
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(path)
    good = tmp_path / "good.pt"
    checkpoint.save({"x": torch.ones(3)}, good)
    good_bytes = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        checkpoint.load(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_model_of_another_configuration_is_refused(faces, fast, tmp_path):
    run = train_subcenter(faces, tmp_path / "run", **{**fast, "epochs": 1})
    state = checkpoint.load(run / "model.pt")
    state["config"]["embedding_size"] = 64
    checkpoint.save(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_run(tmp_path / "model.pt")


def test_bad_settings_and_data_fail_with_one_line(faces, fast, tmp_path):
    with pytest.raises(ConfigError, match="unknown training setting.*epoch_count"):
        train_subcenter(faces, tmp_path / "r1", epoch_count=3, **fast)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_subcenter(faces, tmp_path / "r2", **{**fast, "device": "cuda"}) if not torch.cuda.is_available() else pytest.skip("has CUDA")
    with pytest.raises(DataError, match="fewer than one batch"):
        train_subcenter(faces, tmp_path / "r3", **{**fast, "batch_size": 1000})
    from cleanface.data.synthetic import make_synthetic

    one = make_synthetic(tmp_path / "one", identities=1, per_identity=5, size=32, seed=0, silent=True)
    with pytest.raises(DataError, match="at least 2"):
        train_subcenter(one, tmp_path / "r4", **fast)


def test_undecodable_images_are_left_out_and_counted(faces, fast, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    victim = sorted((data / sorted(p.name for p in data.iterdir() if p.is_dir())[0]).iterdir())[0]
    victim.write_bytes(b"not an image")
    run = train_subcenter(data, tmp_path / "run", **fast)
    config = json.loads((run / "config.json").read_text())
    assert config["images_excluded"] + config["bad_files"] == 1
    assert config["images_used"] == 79 and victim.name in json.dumps(config["bad_files_first"]) + json.dumps(config)
