"""RecordIO: record framing, magic splitting, both dataset layouts, corrupt files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleanface.data.folder import read_folder
from cleanface.data.recordio import (
    MAGIC,
    RecordWriter,
    encode_record,
    iter_records,
    pack_record,
    read_image_at,
    read_rec,
    read_record,
    unpack_payload,
    write_rec,
)
from cleanface.errors import DataError

MAGIC_LE = struct.pack("<I", MAGIC)


def _jpeg(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _folder(root: Path, counts: dict[str, int]) -> Path:
    seed = 0
    for ident, n in counts.items():
        (root / ident).mkdir(parents=True)
        for k in range(n):
            (root / ident / f"{k:03d}.jpg").write_bytes(_jpeg(seed))
            seed += 1
    return root


# -- an independent reader, written from the format description --------------------
def _independent_read(rec: Path, idx: Path) -> dict[int, tuple[int, list[float], bytes]]:
    """key -> (flag, labels, image) by plain struct parsing."""
    data = rec.read_bytes()
    out = {}
    for line in idx.read_text().splitlines():
        key, off = (int(x) for x in line.split("\t"))
        chunks = []
        while True:
            magic, lrec = struct.unpack("<II", data[off : off + 8])
            assert magic == 0xCED7230A
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            chunks.append(data[off + 8 : off + 8 + length])
            off += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
        payload = b"\x0a\x23\xd7\xce".join(chunks)
        flag, label, _, _ = struct.unpack("<IfQQ", payload[:24])
        if flag:
            labels = list(struct.unpack(f"<{flag}f", payload[24 : 24 + 4 * flag]))
            image = payload[24 + 4 * flag :]
        else:
            labels, image = [label], payload[24:]
        out[key] = (flag, labels, image)
    return out


def test_written_rec_matches_the_format_description(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"b": 2, "a": 3, "c": 1}))
    write_rec(src, tmp_path / "out")
    got = _independent_read(tmp_path / "out" / "train.rec", tmp_path / "out" / "train.idx")
    n, c = len(src), src.num_identities
    assert got[0][0] == 2 and got[0][1] == [n + 1, n + 1 + c] and got[0][2] == b""
    images = [got[k] for k in range(1, n + 1)]
    assert [int(lab[0]) for _, lab, _ in images] == sorted(src.labels.tolist())
    # identity records give each label's [start, end) image keys
    for label in range(c):
        flag, (start, end), image = got[n + 1 + label]
        assert flag == 2 and image == b""
        keys = [k for k in range(1, n + 1) if int(got[k][1][0]) == label]
        assert (int(start), int(end)) == (keys[0], keys[-1] + 1)
    assert sorted(img for _, _, img in images) == sorted(src.read_bytes(i) for i in range(n))
    assert (tmp_path / "out" / "identities.txt").read_text().splitlines() == src.names


def test_folder_rec_folder_round_trip_keeps_bytes_and_labels(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"x": 3, "y": 1, "z": 2}))
    rec = read_rec(write_rec(src, tmp_path / "rec"))
    from cleanface.data.folder import write_folder

    back = read_folder(write_folder(rec, tmp_path / "back"))
    assert back.names == src.names
    got = sorted((back.identity_of(i), back.read_bytes(i)) for i in range(len(back)))
    want = sorted((src.identity_of(i), src.read_bytes(i)) for i in range(len(src)))
    assert got == want


def test_rec_paths_and_location_name_identity_and_key(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"p": 2}))
    rec = read_rec(write_rec(src, tmp_path / "rec") / "train.rec")
    assert list(rec.paths) == ["p/1.jpg", "p/2.jpg"]
    assert rec.location(1) == f"{tmp_path / 'rec' / 'train.rec'}@{int(rec.offsets[1])}"


def test_payload_with_magic_is_split_and_reassembled(tmp_path):
    # magic at aligned offsets 0, 8 and at the end of the image, and once unaligned (not a split point)
    image = MAGIC_LE + b"abcd" + MAGIC_LE + b"x" + MAGIC_LE + b"yyy" + MAGIC_LE
    payload = pack_record(0, 7.0, 1, 0, image)
    assert (len(pack_record(0, 0.0, 0, 0)) % 4) == 0
    parts = []
    data = encode_record(payload)
    off = 0
    while off < len(data):
        magic, lrec = struct.unpack_from("<II", data, off)
        assert magic == MAGIC
        parts.append(lrec >> 29)
        off += 8 + ((lrec & ((1 << 29) - 1)) + 3) // 4 * 4
    assert parts == [1, 2, 2, 3]
    assert read_record(data, 0)[0] == payload
    with RecordWriter(tmp_path / "t.rec") as writer:
        writer.write(0, payload)
        writer.write(1, pack_record(0, 3.0, 2, 0, b"plain"))
    index = read_rec(tmp_path / "t.rec")
    assert index.read_bytes(0) == image and index.read_bytes(1) == b"plain"
    assert index.names == ["3", "7"] and index.labels.tolist() == [1, 0]
    assert _independent_read(tmp_path / "t.rec", tmp_path / "t.idx")[0][2] == image


def test_unpack_payload_label_array_and_scalar():
    header, image = unpack_payload(pack_record(0, [1.5, 2.5, 3.5], 9, 4, b"img"))
    assert header.flag == 3 and header.label.tolist() == [1.5, 2.5, 3.5] and (header.id, header.id2) == (9, 4) and image == b"img"
    header, image = unpack_payload(pack_record(0, 2.0, 1, 0, b""))
    assert header.flag == 0 and header.label == 2.0 and image == b""
    with pytest.raises(ValueError):
        unpack_payload(b"\x00" * 10)


def _raw_record(payload: bytes) -> bytes:
    assert MAGIC_LE not in payload
    return struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def test_headerless_im2rec_layout_is_read(tmp_path):
    rec, idx = tmp_path / "data.rec", tmp_path / "data.idx"
    images = [(_jpeg(i), float(lab)) for i, lab in enumerate([5, 2, 5, 9])]
    blob, lines = b"", []
    for key, (img, lab) in enumerate(images):
        lines.append(f"{key}\t{len(blob)}\n")
        blob += _raw_record(struct.pack("<IfQQ", 0, lab, key, 0) + img)
    rec.write_bytes(blob)
    idx.write_text("".join(lines))
    index = read_rec(rec)
    assert index.names == ["2", "5", "9"]
    assert [index.identity_of(i) for i in range(4)] == ["5", "2", "5", "9"]
    assert [index.read_bytes(i) for i in range(4)] == [img for img, _ in images]
    # without the .idx the file is scanned record by record
    idx.unlink()
    scanned = read_rec(rec)
    assert scanned.offsets.tolist() == index.offsets.tolist() and scanned.labels.tolist() == index.labels.tolist()


def test_names_file_beside_rec_names_identities(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"Ann": 1, "Bo": 2}))
    out = write_rec(src, tmp_path / "rec")
    (out / "identities.txt").write_text("first\nsecond\n")
    assert read_rec(out).names == ["first", "second"]
    (out / "identities.txt").write_text("only-one\n")
    with pytest.raises(DataError, match="identities.txt"):
        read_rec(out)


def test_idx_pointing_past_end_is_a_one_line_error(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"a": 2}))
    out = write_rec(src, tmp_path / "rec")
    size = (out / "train.rec").stat().st_size
    with open(out / "train.idx", "a") as handle:
        handle.write(f"99\t{size + 100}\n")
    with pytest.raises(DataError) as err:
        read_rec(out)
    msg = str(err.value)
    assert "train.idx" in msg and str(size + 100) in msg and "\n" not in msg


def test_truncated_rec_names_file_and_offset(tmp_path):
    src = read_folder(_folder(tmp_path / "src", {"a": 2, "b": 2}))
    out = write_rec(src, tmp_path / "rec")
    rec, idx = out / "train.rec", out / "train.idx"
    entries = [line.split("\t") for line in idx.read_text().splitlines()]
    last_image = int(entries[len(src)][1])  # key N: the last image record
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in entries[: len(src) + 1]))
    rec.write_bytes(rec.read_bytes()[: last_image + 100])
    with pytest.raises(DataError) as err:
        read_rec(out)
    msg = str(err.value)
    assert msg.startswith(f"{rec}: record at offset {last_image} is truncated") and "\n" not in msg


def test_bad_magic_is_reported_with_offset(tmp_path):
    rec = tmp_path / "x.rec"
    good = _raw_record(struct.pack("<IfQQ", 0, 0.0, 0, 0) + b"img!")
    rec.write_bytes(good + b"\x01\x02\x03\x04" + good[4:])
    with pytest.raises(DataError, match=rf"bad magic 0x04030201 at offset {len(good)}"):
        read_rec(rec)
    with pytest.raises(DataError, match=r"bad magic 0x[0-9a-f]{8} at offset 4 "):
        read_image_at(rec, 4)


def test_records_without_image_or_with_bad_labels_are_bad_files(tmp_path):
    rec = tmp_path / "x.rec"
    records = [
        struct.pack("<IfQQ", 0, 1.0, 0, 0) + b"good",
        struct.pack("<IfQQ", 0, 1.0, 1, 0),  # no image bytes
        struct.pack("<IfQQ", 0, 2.5, 2, 0) + b"frac",
        struct.pack("<IfQQ", 0, float("nan"), 3, 0) + b"nan!",
    ]
    rec.write_bytes(b"".join(_raw_record(r) for r in records))
    index = read_rec(rec)
    assert len(index) == 1 and index.read_bytes(0) == b"good"
    reasons = [b.reason for b in index.bad_files]
    assert len(reasons) == 3 and "no image" in reasons[0] and "2.5" in reasons[1] and "nan" in reasons[2]


def test_read_image_at_survives_file_replacement(tmp_path):
    rec = tmp_path / "x.rec"
    rec.write_bytes(_raw_record(struct.pack("<IfQQ", 0, 0.0, 0, 0) + b"one!"))
    assert read_image_at(rec, 0) == b"one!"
    tmp = tmp_path / "y.rec"
    tmp.write_bytes(_raw_record(struct.pack("<IfQQ", 0, 0.0, 0, 0) + b"twotwo!!"))
    tmp.replace(rec)
    assert read_image_at(rec, 0) == b"twotwo!!"


def test_iter_records_walks_every_record():
    data = b"".join(encode_record(pack_record(0, float(k), k, 0, bytes([k]) * k)) for k in range(1, 5))
    got = [unpack_payload(p)[1] for _, p in iter_records(data)]
    assert got == [bytes([k]) * k for k in range(1, 5)]
