"""CSV manifests: both parsers, traversal, missing files, malformed rows, writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cleanface.data.index import DatasetIndex
from cleanface.data.manifest import read_manifest, write_manifest
from cleanface.errors import DataError


def _files(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"img:" + rel.encode("utf-8", "surrogateescape"))


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


@pytest.mark.parametrize("quoted", [False, True])
def test_reads_rows_in_order_with_sorted_identities(tmp_path, quoted):
    _files(tmp_path, ["i/1.jpg", "i/2.jpg", "j/1.jpg"])
    q = '"' if quoted else ""
    csv = _write(tmp_path / "m.csv", f"path,identity\r\n{q}j/1.jpg{q},zoe\r\ni/1.jpg,{q}al{q}\r\n\r\ni/2.jpg,al\r\n")
    index = read_manifest(csv)
    assert index.kind == "manifest" and index.root == str(tmp_path)
    assert list(index.paths) == ["j/1.jpg", "i/1.jpg", "i/2.jpg"]
    assert index.names == ["al", "zoe"] and index.labels.tolist() == [1, 0, 0]
    assert index.read_bytes(0) == b"img:j/1.jpg"


def test_fast_and_csv_parsers_agree(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"d{rng.integers(50)}/f{k}.jpg", f"id{rng.integers(20)}") for k in range(300)]
    plain = _write(tmp_path / "a.csv", "path,identity\n" + "".join(f"{p},{i}\n" for p, i in rows))
    # the same rows with one extra column force the csv-module parser
    extra = _write(tmp_path / "b.csv", "identity,path,note\n" + "".join(f'{i},{p},"x, y"\n' for p, i in rows))
    a = read_manifest(plain, check_files=False)
    b = read_manifest(extra, check_files=False)
    assert a.paths == b.paths and a.names == b.names and np.array_equal(a.labels, b.labels)
    assert [a.identity_of(k) for k in range(len(a))] == [i for _, i in rows]


def test_quoted_fields_with_commas_and_newlines(tmp_path):
    _files(tmp_path, ["a,b.jpg"])
    csv = _write(tmp_path / "m.csv", 'path,identity\n"a,b.jpg","Smith, John\nJr"\n')
    index = read_manifest(csv)
    assert list(index.paths) == ["a,b.jpg"] and index.names == ["Smith, John\nJr"]


def test_path_traversal_and_outside_absolute_paths_are_bad_not_read(tmp_path):
    root = tmp_path / "ds"
    _files(root, ["ok.jpg", "sub/ok2.jpg"])
    _files(tmp_path, ["secret.jpg"])
    csv = _write(
        root / "m.csv",
        "path,identity\n"
        "ok.jpg,a\n"
        "../secret.jpg,a\n"
        "../../etc/passwd,b\n"
        "/etc/passwd,b\n"
        f"{tmp_path / 'secret.jpg'},b\n"
        f"{root / 'sub' / 'ok2.jpg'},c\n"
        "sub/../ok.jpg,c\n"
        "x..y/..z,d\n",
    )
    index = read_manifest(csv, check_files=False)
    assert list(index.paths) == ["ok.jpg", str(root / "sub" / "ok2.jpg"), "sub/../ok.jpg", "x..y/..z"]
    bad = {b.location: b.reason for b in index.bad_files}
    assert set(bad) == {"../secret.jpg", "../../etc/passwd", "/etc/passwd", str(tmp_path / "secret.jpg")}
    assert all("leaves the manifest folder" in r for r in bad.values())
    assert "(line 4)" in bad["../../etc/passwd"]
    assert index.names == ["a", "c", "d"]
    assert index.read_bytes(1) == b"img:sub/ok2.jpg"


def test_missing_files_are_bad_unless_not_checked(tmp_path):
    _files(tmp_path, ["here.jpg"])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    csv = _write(tmp_path / "m.csv", "path,identity\nhere.jpg,a\ngone.jpg,b\nempty.jpg,a\nfolder.jpg,a\n")
    index = read_manifest(csv)
    assert list(index.paths) == ["here.jpg"] and index.names == ["a"]
    reasons = {os.path.basename(b.location): b.reason for b in index.bad_files}
    assert reasons == {"gone.jpg": "missing file (line 3)", "empty.jpg": "zero-byte file (line 4)", "folder.jpg": "not a regular file (line 5)"}
    unchecked = read_manifest(csv, check_files=False)
    assert len(unchecked) == 4 and unchecked.bad_files == []


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("path,identity\na.jpg,x\nb.jpg,x,extra\n", 3, "expected 2 fields"),
        ("path,identity\na.jpg,x\nb.jpg\n", 3, "expected 2 fields"),
        ("path,identity\n\n,x\n", 3, "empty path"),
        ("path,identity\na.jpg,\n", 2, "empty identity"),
        ('path,identity\n"a.jpg,x\n', 2, "malformed CSV"),
        ('identity,path\nx,"a.jpg\n', 2, "malformed CSV"),
        ('path,identity\n"a.jpg",x,y\n', 2, "expected 2 fields"),
        ("file,label\na.jpg,x\n", 1, "expected a header"),
    ],
)
def test_malformed_csv_is_a_one_line_error_with_line_number(tmp_path, text, line, what):
    csv = _write(tmp_path / "m.csv", text)
    with pytest.raises(DataError) as err:
        read_manifest(csv, check_files=False)
    msg = str(err.value)
    assert msg.startswith(f"{csv} line {line}: ") and what in msg and "\n" not in msg


def test_empty_manifests_are_errors(tmp_path):
    for text, what in [("", "is empty"), ("path,identity\n", "no rows"), ("path,identity\n\n\n", "no rows")]:
        with pytest.raises(DataError, match=what):
            read_manifest(_write(tmp_path / "m.csv", text))
    with pytest.raises(DataError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.csv")


def test_non_utf8_identity_and_path_survive(tmp_path):
    weird = b"caf\xe9".decode("utf-8", "surrogateescape")
    _files(tmp_path, [f"{weird}/1.jpg"])
    csv = _write(tmp_path / "m.csv", f"path,identity\n{weird}/1.jpg,{weird}\n")
    index = read_manifest(csv)
    assert index.names == [weird] and index.read_bytes(0) == b"img:" + f"{weird}/1.jpg".encode("utf-8", "surrogateescape")


def test_write_then_read_round_trip(tmp_path):
    _files(tmp_path / "data", ["p/1.jpg", "q/2.jpg", "q/3.jpg"])
    index = DatasetIndex.from_lists(tmp_path / "data", "folder", ["p/1.jpg", "q/2.jpg", "q/3.jpg"], ["Doe, Jane", 'Q "q"', 'Q "q"'])
    out = write_manifest(index, tmp_path / "m.csv")
    back = read_manifest(out)
    assert list(back.paths) == ["data/p/1.jpg", "data/q/2.jpg", "data/q/3.jpg"]
    assert back.names == index.names and back.labels.tolist() == index.labels.tolist()
    with pytest.raises(DataError, match="outside"):
        write_manifest(index, tmp_path / "data" / "p" / "m.csv")
