"""Format detection, write_dataset across formats, dataset_info, and the convert/info commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cleanface.data.folder import read_folder
from cleanface.data.info import dataset_info, images_per_identity_histogram
from cleanface.data.open import detect_format, open_dataset, write_dataset
from cleanface.errors import ConfigError, DataError
from cleanface_cli.main import cli


def _tree(root: Path, counts: dict[str, int]) -> Path:
    seed = 0
    for ident, n in counts.items():
        (root / ident).mkdir(parents=True)
        for k in range(n):
            pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            (root / ident / f"{k}.png").write_bytes(buf.getvalue())
            seed += 1
    return root


def _content(index) -> list[tuple[str, bytes]]:
    return sorted((index.identity_of(i), index.read_bytes(i)) for i in range(len(index)))


def _reopen(out: Path, fmt: str):
    # a linked folder may hold symlinks to the source, outside the new root
    return open_dataset(out, follow_symlinks=True) if fmt == "folder" else open_dataset(out)


@pytest.mark.parametrize("first", ["folder", "manifest", "rec"])
@pytest.mark.parametrize("second", ["folder", "manifest", "rec"])
def test_every_format_pair_keeps_identities_and_bytes(tmp_path, first, second):
    src = open_dataset(_tree(tmp_path / "src", {"ann": 2, "bo": 1, "cy": 3}))
    a = _reopen(write_dataset(src, tmp_path / "a", first), first)
    assert a.kind == first
    b = _reopen(write_dataset(a, tmp_path / "b", second), second)
    assert b.kind == second and b.names == src.names and _content(b) == _content(src)


def test_detection_and_accepted_formats(tmp_path):
    src = read_folder(_tree(tmp_path / "src", {"a": 1}))
    rec = write_dataset(src, tmp_path / "rec", "rec")
    man = write_dataset(src, tmp_path / "man", "manifest")
    src.save(tmp_path / "saved.npz")
    assert detect_format(tmp_path / "src") == "folder"
    assert detect_format(rec) == detect_format(rec / "train.rec") == detect_format(rec / "train.idx") == "rec"
    assert detect_format(man) == detect_format(man / "manifest.csv") == "manifest"
    assert open_dataset(tmp_path / "saved.npz", silent=True).fingerprint() == src.fingerprint()
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match=r"cannot tell the format .*\.csv manifest.*\.rec.*\.npz"):
        open_dataset(tmp_path / "data.txt")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match="check_files do not apply to the folder dataset"):
        open_dataset(tmp_path / "src", check_files=False)
    with pytest.raises(ConfigError, match="unknown dataset format 'tar'"):
        write_dataset(src, tmp_path / "x", "tar")


def test_manifest_output_is_self_contained(tmp_path):
    src = read_folder(_tree(tmp_path / "src", {"a": 2}))
    out = write_dataset(src, tmp_path / "man", "manifest", copy=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["images/a/0.png", "images/a/1.png", "manifest.csv"]
    moved = out.rename(tmp_path / "moved")
    back = open_dataset(moved)
    assert _content(back) == _content(src)


def test_overwrite_rules(tmp_path):
    src = read_folder(_tree(tmp_path / "src", {"a": 1}))
    write_dataset(src, tmp_path / "out", "rec")
    from cleanface.errors import CleanfaceError

    with pytest.raises(CleanfaceError, match="not empty"):
        write_dataset(src, tmp_path / "out", "folder")
    write_dataset(src, tmp_path / "out", "folder", overwrite=True)
    assert detect_format(tmp_path / "out") == "folder"


def test_dataset_info_statistics_and_histogram(tmp_path):
    root = _tree(tmp_path / "src", {"a": 1, "b": 2, "c": 4, "d": 4})
    (root / "e").mkdir()
    (root / "a" / "z.png").write_bytes(b"")
    info = dataset_info(read_folder(root))
    assert (info["identities"], info["images"], info["bad_files"]) == (4, 11, 2)
    assert info["images_per_identity"] == {"min": 1, "median": 3.0, "mean": 2.75, "max": 4}
    assert info["histogram"] == {"1": 1, "2": 1, "3-4": 2, "5-9": 0, "10-19": 0, "20-49": 0, "50-99": 0, "100+": 0}
    assert info["bad_reasons"] == {"empty identity folder": 1, "zero-byte file": 1}
    json.dumps(info)
    edges = images_per_identity_histogram(np.array([1, 2, 3, 4, 5, 9, 10, 19, 20, 49, 50, 99, 100, 5000]))
    assert list(edges.values()) == [1, 1, 2, 2, 2, 2, 2, 2]


def test_cli_convert_and_info(tmp_path):
    runner = CliRunner()
    src = _tree(tmp_path / "src", {"a": 2, "b": 1})
    result = runner.invoke(cli, ["convert", str(src), str(tmp_path / "rec"), "--format", "rec", "--silent"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 images of 2 identities" in result.output
    result = runner.invoke(cli, ["info", str(tmp_path / "rec"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["kind"], info["identities"], info["images"]) == ("rec", 2, 3)
    result = runner.invoke(cli, ["info", str(src), "--silent"])
    assert result.exit_code == 0 and "identities" in result.output and "3-4" in result.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: dataset {tmp_path / 'nope'} does not exist"
    src = _tree(tmp_path / "src", {"a": 1})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    result = runner.invoke(cli, ["convert", str(src), str(tmp_path / "busy"), "--format", "folder", "--silent"])
    assert result.exit_code == 1 and "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1


def test_every_data_command_has_help():
    from cleanface_cli.data_cmds import COMMANDS

    runner = CliRunner()
    for command in COMMANDS:
        assert command.help and command.help.strip()
        result = runner.invoke(cli, [command.name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{command.name} --{param.name} has no help"
