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


def test_paths_may_leave_the_manifest_folder_only_to_name_images(tmp_path):
    # A manifest is the user's own list: "../x.jpg" and absolute paths are read. Only a
    # row that leaves the folder without naming an image file (/etc/passwd) is refused.
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
        "x..y/..z,d\n"
        "notes.txt,d\n",
    )
    index = read_manifest(csv, check_files=False)
    assert list(index.paths) == ["ok.jpg", "../secret.jpg", str(tmp_path / "secret.jpg"), str(root / "sub" / "ok2.jpg"), "sub/../ok.jpg", "x..y/..z", "notes.txt"]
    bad = {b.location: b.reason for b in index.bad_files}
    assert set(bad) == {"../../etc/passwd", "/etc/passwd"}
    assert all("leaves the manifest folder" in r and "image file" in r for r in bad.values())
    assert "(line 4)" in bad["../../etc/passwd"]
    assert index.names == ["a", "b", "c", "d"]
    assert index.read_bytes(1) == index.read_bytes(2) == b"img:secret.jpg"
    assert index.read_bytes(3) == b"img:sub/ok2.jpg"


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
    # a manifest may point outside its folder: those rows are written as absolute paths
    inner = read_manifest(write_manifest(index, tmp_path / "data" / "p" / "m.csv"))
    assert list(inner.paths) == ["1.jpg", str(tmp_path / "data" / "q" / "2.jpg"), str(tmp_path / "data" / "q" / "3.jpg")]
    assert [inner.read_bytes(i) for i in range(3)] == [index.read_bytes(i) for i in range(3)]


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _crawl(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Images under tmp/crawl (same base names in two folders), listed by absolute path in tmp/lists/m.csv."""
    images = [tmp_path / "crawl" / d / name for d in ("x1", "x2") for name in ("img.png", "other.png")]
    for k, path in enumerate(images):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(k))
    (tmp_path / "lists").mkdir()
    rows = "".join(f"{p},{'ann' if k % 2 == 0 else '../../bob'}\n" for k, p in enumerate(images))
    return _write(tmp_path / "lists" / "m.csv", "path,identity\n" + rows), images


def test_manifest_with_absolute_paths_elsewhere_is_read_and_written_inside_the_output(tmp_path):
    from cleanface.data.open import open_dataset, write_dataset

    csv, images = _crawl(tmp_path)
    index = open_dataset(csv)
    assert len(index) == 4 and index.bad_files == [] and index.names == ["../../bob", "ann"]
    assert [index.read_bytes(i) for i in range(4)] == [p.read_bytes() for p in images]
    before = {p for p in tmp_path.rglob("*")}
    for fmt in ("folder", "manifest"):
        out = tmp_path / "out" / fmt
        write_dataset(index, out, fmt, copy=True)
        after = {p for p in tmp_path.rglob("*")} - before
        assert all(p == tmp_path / "out" or (tmp_path / "out") in p.parents for p in after), sorted(after)
        back = open_dataset(out if fmt == "folder" else out / "manifest.csv")
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        prefix = "" if fmt == "folder" else "images/"
        assert f"{prefix}ann/img.png" in files and f"{prefix}ann/img~2.png" in files  # same base names made distinct
        assert all(not f.startswith("..") for f in files)
        assert sorted(back.read_bytes(i) for i in range(len(back))) == sorted(p.read_bytes() for p in images)
        before |= after


def test_manifest_root_argument_and_absolute_manifest_written_back(tmp_path):
    csv, images = _crawl(tmp_path)
    rel = _write(tmp_path / "lists" / "rel.csv", "path,identity\nx1/img.png,a\nx2/other.png,b\n")
    index = read_manifest(rel, root=tmp_path / "crawl")
    assert index.root == str(tmp_path / "crawl") and index.read_bytes(1) == images[3].read_bytes()
    with pytest.raises(DataError, match="manifest root .* is not a folder"):
        read_manifest(rel, root=tmp_path / "nowhere")
    # written beside the list, rows outside its folder stay absolute and read back the same files
    out = read_manifest(write_manifest(read_manifest(csv), tmp_path / "lists" / "copy.csv"))
    assert list(out.paths) == [str(p) for p in images]


def test_a_file_that_is_not_an_image_is_never_copied_into_an_output(tmp_path):
    from cleanface.data.open import write_dataset

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(_png(0))
    (tmp_path / "secret.png").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "note.bmp").write_bytes(b"BM but only a note\n")  # the leading bytes of a BMP, and nothing else
    csv = _write(tmp_path / "src" / "m.csv", f"path,identity\na.png,ann\n{tmp_path / 'secret.png'},bob\n")
    index = read_manifest(csv)
    assert len(index) == 2  # named like an image: indexed, but never written out
    for fmt in ("folder", "manifest", "rec"):
        with pytest.raises(DataError, match=r"secret\.png is not an image .*not written into"):
            write_dataset(index, tmp_path / fmt, fmt, copy=True)
        assert not (tmp_path / fmt).exists()
    note = read_manifest(_write(tmp_path / "src" / "n.csv", f"path,identity\na.png,ann\n{tmp_path / 'note.bmp'},bob\n"))
    with pytest.raises(DataError, match=r"note\.bmp is not an image"):
        write_dataset(note, tmp_path / "note", "folder", copy=True)
