"""Arbitrary bytes as RecordIO or manifest give a valid index or a DataError, nothing else."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cleanface.data._paths import has_image_extension
from cleanface.data.index import DatasetIndex
from cleanface.data.manifest import read_manifest
from cleanface.data.recordio import MAGIC, encode_record, pack_record, read_image_at, read_rec
from cleanface.errors import DataError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC_LE = struct.pack("<I", MAGIC)


def _valid(index: DatasetIndex) -> None:
    assert len(index) > 0 and len(index.paths) == len(index.labels)
    assert index.labels.min() >= 0 and index.labels.max() < index.num_identities
    assert index.num_identities == len(np.unique(index.labels))  # readers renumber consecutively


# bytes that look a bit like RecordIO: real records, garbage, magic words, cut at random
_label = st.one_of(st.integers(0, 4).map(float), st.floats(allow_nan=True, allow_infinity=True, width=32))
_image = st.one_of(st.binary(min_size=1, max_size=24), st.just(b""), st.just(MAGIC_LE * 2))
_record = st.builds(
    lambda flag, label, image: encode_record(pack_record(0, label, 0, 0, image) if flag == 0 else pack_record(0, [label] * flag, 0, 0, image)),
    st.integers(0, 3),
    _label,
    _image,
)
_chunk = st.one_of(_record, st.binary(max_size=32), st.just(MAGIC_LE), st.just(MAGIC_LE + struct.pack("<I", (1 << 29) | 8)))
_rec_bytes = st.one_of(
    st.lists(_record, min_size=1, max_size=5).map(b"".join),
    st.builds(lambda chunks, cut: b"".join(chunks)[: cut if cut >= 0 else None], st.lists(_chunk, max_size=6), st.integers(-1, 200)),
)
_idx_text = st.one_of(
    st.binary(max_size=64),
    st.lists(st.tuples(st.integers(-2, 8), st.integers(-4, 260)), max_size=6).map(lambda rows: "".join(f"{k}\t{o}\n" for k, o in rows).encode()),
)


def _true_idx(rec: bytes) -> bytes:
    """An idx for the records at the start of ``rec`` (as far as they parse), walked with plain struct."""
    lines, pos, key = [], 0, 0
    while pos + 8 <= len(rec):
        magic, lrec = struct.unpack_from("<II", rec, pos)
        if magic != MAGIC or lrec >> 29 != 0:
            break
        lines.append(f"{key}\t{pos}\n")
        pos, key = pos + 8 + ((lrec & ((1 << 29) - 1)) + 3) // 4 * 4, key + 1
    return "".join(lines).encode()


@SETTINGS
@given(rec=_rec_bytes, idx=st.one_of(st.none(), st.just("true"), _idx_text))
def test_any_rec_and_idx_bytes(rec, idx):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.rec"
        path.write_bytes(rec)
        if idx is not None:
            path.with_suffix(".idx").write_bytes(_true_idx(rec) if idx == "true" else idx)
        try:
            index = read_rec(path)
        except DataError as exc:
            assert "\n" not in str(exc)
            event("DataError")
            return
        event("valid index")
        _valid(index)
        for i in range(len(index)):
            assert isinstance(read_image_at(path, int(index.offsets[i])), bytes)


_cell = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.sampled_from(["a.jpg", "../x.jpg", "/etc/passwd", "..", ".", '"', '""', ",", "\r", "\n", "x/../a.jpg", "b.jpg"]),
)
_name = st.text(alphabet="abc ,\"\n", min_size=1, max_size=4)
_csv_text = st.one_of(
    st.builds(
        lambda header, rows: (header + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8"),
        st.sampled_from(["path,identity\n", "identity,path\n", "path,identity,x\n", "path\n", ""]),
        st.lists(st.lists(_cell, min_size=1, max_size=3), max_size=6),
    ),
    st.builds(  # well-formed rows, sometimes quoted
        lambda rows, quote: ("path,identity\n" + "".join(f'{p},"{n.replace(chr(34), 2 * chr(34))}"\n' if quote else f"{p},{n}\n" for p, n in rows)).encode(),
        st.lists(st.tuples(st.sampled_from(["a.jpg", "../a.jpg", "b.jpg", "x/../a.jpg", "/etc/passwd"]), _name), min_size=1, max_size=6),
        st.booleans(),
    ),
)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=120), _csv_text), check=st.booleans())
def test_any_manifest_bytes(data, check):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        path.write_bytes(data)
        (Path(tmp) / "a.jpg").write_bytes(b"x")
        try:
            index = read_manifest(path, check_files=check)
        except DataError as exc:
            assert "\n" not in str(exc)
            event("DataError")
            return
        event("valid index")
        _valid(index)
        root = Path(tmp).resolve()
        for i in range(len(index)):
            # a row may leave the manifest folder (the manifest is the user's list) only to name an image file
            full = Path(str(Path(index.root, index.paths[i])).replace("\0", "_")).resolve(strict=False)
            assert full == root or root in full.parents or has_image_extension(index.paths[i])
            if check:
                assert Path(index.abspath(i)).is_file()
