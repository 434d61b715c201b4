"""Image folders: order, every kind of bad input, writing with safe names."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleanface.data.folder import folder_layout, read_folder, safe_name, write_folder
from cleanface.data.index import DatasetIndex
from cleanface.errors import DataError


def _png(seed: int = 0, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _reasons(index: DatasetIndex) -> dict[str, str]:
    return {os.path.basename(b.location): b.reason for b in index.bad_files}


def test_sorted_identities_and_files_case_insensitive_extensions(tmp_path):
    for rel in ["zed/b.PNG", "zed/a.png", "amy/2.JPEG", "amy/10.jpg", "Bob/x.webp", "amy/notes.txt", "amy/.hidden.jpg"]:
        _put(tmp_path / rel, _png(len(rel)))
    index = read_folder(tmp_path)
    assert index.names == ["Bob", "amy", "zed"]
    assert list(index.paths) == ["Bob/x.webp", "amy/10.jpg", "amy/2.JPEG", "zed/a.png", "zed/b.PNG"]
    assert index.labels.tolist() == [0, 1, 1, 2, 2]
    assert "unsupported extension" in _reasons(index)["notes.txt"]
    assert ".hidden.jpg" not in _reasons(index)


def test_orl_pgm_folder(orl_root):
    index = read_folder(orl_root)
    assert index.num_identities == 40 and len(index) == 400
    assert np.all(index.counts() == 10)
    assert all(p.endswith(".pgm") for p in index.paths)
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(index.read_bytes(0))) as img:
        assert img.size == (92, 112) and img.mode == "L"


def test_bad_files_are_recorded_and_indexing_goes_on(tmp_path):
    _put(tmp_path / "a" / "good.png", _png())
    _put(tmp_path / "a" / "zero.jpg", b"")
    _put(tmp_path / "a" / "text.jpg", b"this is not an image at all")
    _put(tmp_path / "a" / "trunc.png", _png()[:12])
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, "JPEG")
    _put(tmp_path / "a" / "trunc.jpg", jpeg.getvalue()[:100])
    (tmp_path / "empty_person").mkdir()
    (tmp_path / "a" / "nested").mkdir()
    _put(tmp_path / "stray.jpg", _png())
    index = read_folder(tmp_path)
    assert list(index.paths) == ["a/good.png"]
    reasons = _reasons(index)
    assert reasons["zero.jpg"] == "zero-byte file"
    assert "PIL cannot identify" in reasons["text.jpg"]
    assert "PIL cannot identify" in reasons["trunc.png"]
    assert reasons["trunc.jpg"].startswith("truncated or corrupt image header")
    assert reasons["empty_person"] == "empty identity folder"
    assert "nested folder" in reasons["nested"]
    assert "outside any identity folder" in reasons["stray.jpg"]


def test_unreadable_file_is_recorded(tmp_path, monkeypatch):
    _put(tmp_path / "a" / "ok.png", _png())
    locked = _put(tmp_path / "a" / "locked.png", _png(1))
    from PIL import Image as PILImage

    real_open = PILImage.open

    def fake_open(fp, *args, **kwargs):
        if str(fp) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PILImage, "open", fake_open)
    index = read_folder(tmp_path)
    assert list(index.paths) == ["a/ok.png"]
    assert _reasons(index)["locked.png"] == "cannot read: Permission denied"


def test_identity_with_only_bad_files_disappears_but_is_reported(tmp_path):
    _put(tmp_path / "a" / "ok.png", _png())
    _put(tmp_path / "b" / "zero.png", b"")
    index = read_folder(tmp_path)
    assert index.names == ["a"]
    assert _reasons(index)["b"] == "identity folder holds no usable image"


def test_non_utf8_identity_name_is_kept(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    os.mkdir(raw)
    with open(raw + b"/1.png", "wb") as handle:
        handle.write(_png())
    _put(tmp_path / "plain" / "1.png", _png(1))
    index = read_folder(tmp_path)
    assert index.num_identities == 2
    weird = [n for n in index.names if n != "plain"][0]
    assert weird.encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert index.read_bytes(list(index.names).index(weird)) == _png()
    index.save(tmp_path.parent / f"{tmp_path.name}-index.npz")
    assert DatasetIndex.load(tmp_path.parent / f"{tmp_path.name}-index.npz").names == index.names
    from cleanface.data.recordio import read_rec, write_rec

    rec = read_rec(write_rec(index, tmp_path.parent / f"{tmp_path.name}-rec"))
    assert rec.names == index.names and rec.fingerprint() != index.fingerprint()


def test_symlink_outside_root_refused_unless_followed(tmp_path):
    outside = _put(tmp_path / "elsewhere" / "face.png", _png(3))
    root = tmp_path / "root"
    _put(root / "a" / "own.png", _png())
    (root / "a" / "linked.png").symlink_to(outside)
    (root / "b").symlink_to(outside.parent, target_is_directory=True)
    (root / "a" / "inside.png").symlink_to(root / "a" / "own.png")
    index = read_folder(root)
    assert list(index.paths) == ["a/inside.png", "a/own.png"]
    reasons = _reasons(index)
    assert "outside the dataset root" in reasons["linked.png"] and "outside the dataset root" in reasons["b"]
    followed = read_folder(root, follow_symlinks=True)
    assert list(followed.paths) == ["a/inside.png", "a/linked.png", "a/own.png", "b/face.png"]
    assert followed.bad_files == []


def test_symlink_loops_and_broken_links_are_bad_even_when_following(tmp_path):
    _put(tmp_path / "a" / "ok.png", _png())
    (tmp_path / "a" / "loop1.jpg").symlink_to(tmp_path / "a" / "loop2.jpg")
    (tmp_path / "a" / "loop2.jpg").symlink_to(tmp_path / "a" / "loop1.jpg")
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "dirloop").symlink_to(tmp_path / "dirloop", target_is_directory=True)
    for follow in (False, True):
        index = read_folder(tmp_path, follow_symlinks=follow)
        reasons = _reasons(index)
        assert list(index.paths) == ["a/ok.png"]
        assert reasons["loop1.jpg"] == reasons["loop2.jpg"] == reasons["dirloop"] == "symlink loop"
        assert reasons["gone.jpg"] == "broken symlink"


def test_empty_dataset_error_names_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=f"no usable images found in {tmp_path}"):
        read_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path / "missing")


def test_safe_name_rules():
    assert safe_name("a/b") == "a_b"
    assert safe_name("..") == "_.."
    assert safe_name(".") == "_."
    assert safe_name("") == "_"
    assert safe_name("x\0y") == "x_y"
    assert safe_name(".hidden") == "_.hidden"
    long = "n" * 300
    assert len(safe_name(long).encode()) <= 200 and safe_name(long) == safe_name(long) != safe_name("n" * 301)
    weird = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert safe_name(weird) == weird


def test_layout_avoids_collisions_deterministically(tmp_path):
    index = DatasetIndex.from_lists(
        tmp_path, "manifest", ["x/img.jpg", "y/img.jpg", "z/img.jpg", "w/a.jpg"], ["a/b", "a/b", "a_b", ".."], names=["a/b", "a_b", ".."]
    )
    layout = list(folder_layout(index))
    assert layout == ["a_b/img.jpg", "a_b/img~2.jpg", "a_b~2/img.jpg", "_../a.jpg"]
    assert list(folder_layout(index)) == layout


def test_write_folder_links_or_copies_and_reads_back(tmp_path):
    for rel in ["p/1.png", "p/2.png", "q/1.png"]:
        _put(tmp_path / "src" / rel, _png(len(rel) + ord(rel[0])))
    src = read_folder(tmp_path / "src")
    for copy in (False, True):
        out = write_folder(src, tmp_path / f"out{copy}", copy=copy)
        back = read_folder(out, follow_symlinks=True)
        assert list(back.paths) == list(src.paths) and back.names == src.names
        assert [back.read_bytes(i) for i in range(len(back))] == [src.read_bytes(i) for i in range(len(src))]
        linked = os.stat(out / "p" / "1.png").st_ino == os.stat(tmp_path / "src" / "p" / "1.png").st_ino
        assert linked != copy or (out / "p" / "1.png").is_symlink()
    assert not list(tmp_path.glob(".*partial"))


def test_write_folder_refuses_non_empty_output_and_own_source(tmp_path):
    _put(tmp_path / "src" / "p" / "1.png", _png())
    src = read_folder(tmp_path / "src")
    _put(tmp_path / "busy" / "file", b"x")
    from cleanface.errors import CleanfaceError

    with pytest.raises(CleanfaceError, match="not empty"):
        write_folder(src, tmp_path / "busy")
    write_folder(src, tmp_path / "busy", overwrite=True, copy=True)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["p"]
    with pytest.raises(DataError, match="holds the source dataset"):
        write_folder(src, tmp_path / "src", overwrite=True)


def test_symlinked_output_of_write_folder_reads_back(tmp_path, monkeypatch):
    """When hard links fail, write_folder symlinks and marks the folder so it reads back whole."""
    from PIL import Image

    from cleanface.data.folder import read_folder, write_folder

    src = tmp_path / "src"
    for ident in ("a", "b"):
        (src / ident).mkdir(parents=True)
        for n in range(2):
            Image.new("RGB", (8, 8), (n * 40, 10, 10)).save(src / ident / f"{n}.png")
    index = read_folder(src)

    def no_hardlinks(*args, **kwargs):
        raise OSError("cross-device link")

    monkeypatch.setattr("cleanface.data.folder.os.link", no_hardlinks)
    out = write_folder(index, tmp_path / "out")
    assert any(p.is_symlink() for p in out.rglob("*.png"))
    again = read_folder(out)
    assert len(again) == 4 and not again.bad_files
    assert again.names == ["a", "b"]
