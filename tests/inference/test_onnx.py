"""ONNX export of a run and embedding with ONNX models: the card, dynamic batch, parity with PyTorch, soft failures."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cleanface.data.images import decode_image, to_tensor_batch
from cleanface.data.open import open_dataset
from cleanface.data.synthetic import make_pairs, make_synthetic
from cleanface.errors import ConfigError
from cleanface.inference.run import load_run
from cleanface_cli.main import cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cleanface._atomic import file_sha256  # noqa: E402
from cleanface.inference.onnx_embed import load_onnx  # noqa: E402
from cleanface.inference.onnx_export import check_images  # noqa: E402

SIZE = 32
TINY = ["--input-size", str(SIZE), "--embedding-size", "32", "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--silent", "--no-report"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished sub-center run (with verification results) on 8 synthetic identities, and its data."""
    root = tmp_path_factory.mktemp("onnx")
    faces = make_synthetic(root / "faces", identities=8, per_identity=10, size=SIZE, seed=0, silent=True)
    make_pairs(faces, root / "pairs.txt", num_pairs=40, seed=0)
    res = CliRunner().invoke(cli, ["train-subcenter", str(faces), "--out", str(root / "run"), "--k", "2", "--val", str(root / "pairs.txt"),
                                   "--val-images", str(faces), "--cache-dir", str(root / "cache"), *TINY])
    assert res.exit_code == 0, res.output
    return root, faces, root / "run"


@pytest.fixture(scope="module")
def exported(trained):
    root, faces, run = trained
    res = CliRunner().invoke(cli, ["export", str(run), "--onnx", str(root / "model" / "m.onnx")])
    assert res.exit_code == 0, res.output
    return root / "model" / "m.onnx", res.output


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_export_writes_a_checked_model_and_its_card(trained, exported):
    root, faces, run = trained
    model, output = exported
    card = json.loads(model.with_suffix(".json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert card["input"]["size"] == SIZE and card["input"]["shape"] == ["batch", 3, SIZE, SIZE] and card["input"]["crop"] is None
    assert card["input"]["channels"] == "RGB" and card["input"]["layout"] == "NCHW" and card["input"]["mean"] == card["input"]["std"] == 127.5
    assert card["embedding_size"] == 32 and card["backbone"] == config["backbone"] and card["num_identities"] == 8
    assert card["training_data"] == {"path": config["data"], "fingerprint": config["data_fingerprint"]}
    assert card["verification"]["num_pairs"] == 40 and "roc" not in card["verification"]
    assert card["sha256"] == file_sha256(model) and card["opset"] >= 18 and card["cleanface_version"]
    check = card["export_check"]
    assert check["source"] == "dataset" and check["data"] == config["data"] and check["batch_sizes"] == [1, 16]
    assert check["max_abs_diff"] < 1e-3 and check["min_cosine"] > 0.9999
    assert f"max abs diff {check['max_abs_diff']:.3g}" in output and "min cosine" in output

    # dynamic batch: batch 1 and 5 run in onnxruntime and agree with the PyTorch backbone
    backbone = load_run(run).backbone
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "embedding"
    index = open_dataset(faces)
    images = np.stack([decode_image(index.read_bytes(i), size=SIZE, crop=None) for i in range(5)])
    for batch in (images[:1], images):
        x = to_tensor_batch(batch)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = backbone(x).numpy()
        assert got.shape == (len(batch), 32)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_export_refuses_to_replace_and_checks_on_given_data(trained, exported):
    root, faces, run = trained
    model, _ = exported
    again = CliRunner().invoke(cli, ["export", str(run), "--onnx", str(model)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad_name = CliRunner().invoke(cli, ["export", str(run), "--onnx", str(root / "m.bin")])
    assert bad_name.exit_code == 1 and "must end in .onnx" in bad_name.output


def test_export_check_falls_back_to_seeded_random_images(tmp_path):
    images, source = check_images({"input_size": SIZE, "data": str(tmp_path / "gone")}, None, count=4)
    assert source["source"] == "random" and "could not be read" in source["warning"] and "--data" in source["warning"]
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert np.array_equal(images, check_images({"input_size": SIZE}, None, count=4)[0])  # seeded


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embed_onnx_matches_embed_run(trained, exported, tmp_path, dtype):
    root, faces, run = trained
    model, _ = exported
    runner = CliRunner()
    for args, out in (([str(run), str(faces)], "torch"), (["--onnx", str(model), str(faces)], "onnx")):
        res = runner.invoke(cli, ["embed", *args, "--out", str(tmp_path / out), "--dtype", dtype, "--silent"])
        assert res.exit_code == 0, res.output
    a, b = (np.load(tmp_path / out / "embeddings.npy") for out in ("torch", "onnx"))
    assert a.shape == b.shape == (80, 32) and a.dtype == b.dtype == np.dtype(dtype)
    assert np.min(np.sum(_unit(a) * _unit(b), axis=1)) > 1 - 1e-4
    meta_t, meta_o = (json.loads((tmp_path / out / "embeddings.json").read_text()) for out in ("torch", "onnx"))
    assert meta_o["model"] == file_sha256(model)[:16] and meta_o["model"] != meta_t["model"]
    assert {k: v for k, v in meta_o.items() if k != "model"} == {k: v for k, v in meta_t.items() if k != "model"}


def test_model_without_card_uses_its_metadata(trained, exported, tmp_path):
    root, faces, run = trained
    model, _ = exported
    shutil.copy(model, tmp_path / "bare.onnx")
    loaded = load_onnx(tmp_path / "bare.onnx")
    assert loaded.card is None and loaded.preprocess.source == "metadata" and loaded.preprocess.size == SIZE
    assert load_onnx(model).preprocess.source == "card"
    shutil.copy(model.with_suffix(".json"), tmp_path / "other.json")
    _zoo_model(tmp_path / "other.onnx")
    with pytest.raises(ConfigError, match="describes another model"):
        load_onnx(tmp_path / "other.onnx")


def _zoo_model(path, *, batch=1, size=SIZE) -> np.ndarray:
    """An insightface-zoo-like model without card: fixed batch, input 'data', global mean pool then a linear map; returns the map."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["fc1"])],
        "zoo", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 4])], [numpy_helper.from_array(weight, "w")])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return weight


def test_embed_onnx_zoo_model_bgr_fixed_batch(trained, tmp_path):
    root, faces, run = trained
    weight = _zoo_model(tmp_path / "zoo.onnx")
    res = CliRunner().invoke(cli, ["embed", "--onnx", str(tmp_path / "zoo.onnx"), str(faces), "--out", str(tmp_path / "emb"),
                                   "--bgr", "--mean", "127.5", "--std", "128", "--dtype", "float32", "--batch-size", "7", "--silent"])
    assert res.exit_code == 0, res.output
    index = open_dataset(faces)
    pixels = np.stack([decode_image(index.read_bytes(i), size=SIZE, crop=None) for i in range(len(index))]).astype(np.float64)
    expected = _unit((((pixels[..., ::-1] - 127.5) / 128.0).mean(axis=(1, 2))) @ weight)  # the flip leaves a global mean unchanged
    got = np.load(tmp_path / "emb" / "embeddings.npy")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    rgb = CliRunner().invoke(cli, ["embed", "--onnx", str(tmp_path / "zoo.onnx"), str(faces), "--out", str(tmp_path / "rgb"), "--dtype", "float32", "--silent"])
    assert rgb.exit_code == 0 and not np.allclose(np.load(tmp_path / "rgb" / "embeddings.npy"), expected, atol=1e-3)

    wrong = CliRunner().invoke(cli, ["embed", "--onnx", str(tmp_path / "zoo.onnx"), str(faces), "--out", str(tmp_path / "e2"), "--input-size", "48"])
    assert wrong.exit_code == 1 and "takes 32x32 inputs" in wrong.output
    _zoo_model(tmp_path / "dyn.onnx", batch="N", size="S")
    dynamic = CliRunner().invoke(cli, ["embed", "--onnx", str(tmp_path / "dyn.onnx"), str(faces), "--out", str(tmp_path / "e3")])
    assert dynamic.exit_code == 1 and "give --input-size" in dynamic.output


def test_missing_extra_is_one_line_with_the_install_command(trained, exported, tmp_path, monkeypatch):
    root, faces, run = trained
    model, _ = exported
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    runner = CliRunner()
    for args in (["export", str(run), "--onnx", str(tmp_path / "x.onnx")], ["embed", "--onnx", str(model), str(faces), "--out", str(tmp_path / "e")]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 1 and len(_errors(res.output)) == 1, res.output
        assert "pip install 'cleanface[onnx]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_model_is_one_clear_line(trained, exported, tmp_path):
    root, faces, run = trained
    model, _ = exported
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    (tmp_path / "cut.onnx").write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    for name in ("junk.onnx", "cut.onnx"):
        res = CliRunner().invoke(cli, ["embed", "--onnx", str(tmp_path / name), str(faces), "--out", str(tmp_path / "e")])
        assert res.exit_code == 1 and len(_errors(res.output)) == 1, res.output
        assert f"{name} is not a readable ONNX model" in res.output
    usage = CliRunner().invoke(cli, ["embed", str(run), str(faces), "--onnx", str(model), "--out", str(tmp_path / "e")])
    assert usage.exit_code == 2 and "only DATA" in usage.output
