"""Decoding every image mode to RGB, crops and resizes, refusals, and tensor conversion."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cleanface.data.images import MAX_IMAGE_PIXELS, decode_image, flip_batch, to_tensor, to_tensor_batch, to_uint8
from cleanface.errors import DataError


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_grey_becomes_three_equal_channels():
    grey = np.arange(24 * 24, dtype=np.uint8).reshape(24, 24) % 251
    out = decode_image(encode(Image.fromarray(grey, "L")), size=24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 1], grey) and np.array_equal(out[..., 2], grey)


def test_palette_image_keeps_its_colours():
    img = Image.new("P", (16, 16))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    out = decode_image(encode(img), size=16)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 15]) == (0, 0, 255)


def test_rgba_is_composited_over_white():
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[:, :4] = (10, 20, 30, 255)  # opaque left half
    arr[:, 4:] = (10, 20, 30, 0)  # transparent right half
    out = decode_image(encode(Image.fromarray(arr, "RGBA")), size=8)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 7]) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_to_eight_bits():
    arr = np.zeros((8, 8), dtype=np.uint16)
    arr[:, 4:] = 65535
    arr[:, 2:4] = 257 * 100
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = decode_image(encode(img), size=8)
    assert out[0, 0, 0] == 0 and out[0, 2, 1] == 100 and out[0, 7, 2] == 255


def test_cmyk_jpeg_and_la_decode_to_rgb():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # red
    out = decode_image(encode(cmyk, "JPEG", quality=95), size=10)
    assert out.shape == (10, 10, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60
    la = Image.new("LA", (10, 10), (80, 255))
    assert np.all(decode_image(encode(la), size=10) == 80)


def test_pgm_from_orl(orl_root):
    data = (orl_root / "s1" / "1.pgm").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L" and img.size == (92, 112)
    out = decode_image(data, size=48)
    assert out.shape == (48, 48, 3)
    assert np.array_equal(out[..., 0], out[..., 2])
    assert 20 < out.mean() < 235  # a real face, not a blank


def _target(side: int, inner: int) -> np.ndarray:
    """Blue image of side ``side`` with a red centre square of side ``inner``."""
    arr = np.zeros((side, side, 3), dtype=np.uint8)
    arr[..., 2] = 255
    lo = (side - inner) // 2
    arr[lo : lo + inner, lo : lo + inner] = (255, 0, 0)
    return arr


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_centre_crop_selects_the_centre(fmt):
    data = encode(Image.fromarray(_target(256, 128)), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = decode_image(data, size=32, crop=120).astype(int)  # inside the red square
    assert out[..., 0].min() > 200 and out[..., 2].max() < 60
    whole = decode_image(data, size=32).astype(int)  # red only in the middle
    assert whole[0, 0, 2] > 200 and whole[16, 16, 0] > 200


def test_jpeg_reduced_scale_decode_matches_full_decode():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((250, 250), Image.Resampling.BICUBIC))
    jpeg = encode(Image.fromarray(smooth), "JPEG", quality=95)
    png = encode(Image.fromarray(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    fast, full = decode_image(jpeg, size=64, crop=128), decode_image(png, size=64, crop=128)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


def test_crop_is_clamped_and_non_square_images_fill_the_output():
    img = Image.fromarray(_target(60, 20)[:, :40])  # 40 wide, 60 high
    assert decode_image(encode(img), size=16, crop=500).shape == (16, 16, 3)
    assert np.array_equal(decode_image(encode(img), size=16, crop=500), decode_image(encode(img), size=16, crop=40))


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    raw = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, chunk length and type
    raw[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[12 : ihdr + 13]))
    raw[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(raw)


@pytest.mark.parametrize("side", [20000, 9000])
def test_decompression_bomb_is_refused(side):
    assert side * side > MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="bomb") as err:
        decode_image(_png_with_size(side, side), size=32, where="big.png")
    assert "big.png" in str(err.value)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "zero-byte"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_empty_and_non_image_bytes(data, why):
    with pytest.raises(DataError, match=why) as err:
        decode_image(data, size=8, where="people/x.jpg")
    assert "people/x.jpg" in str(err.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_names_its_location(fmt):
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(DataError, match="truncated|corrupt") as err:
        decode_image(data[: len(data) // 2], size=16, where="a/b.img")
    assert str(err.value).startswith("cannot decode a/b.img")


def test_bad_arguments():
    data = encode(Image.new("RGB", (4, 4)))
    with pytest.raises(DataError, match="size"):
        decode_image(data, size=0)
    with pytest.raises(DataError, match="crop"):
        decode_image(data, size=4, crop=0)


def test_to_tensor_formula_and_layout():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    arr[0, 0] = (0, 255, 128)
    t = to_tensor(arr)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    expected = (arr.astype(np.float64) / 255 - 0.5) / 0.5
    assert np.allclose(t.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert t[0, 0, 0] == -1 and t[1, 0, 0] == 1
    with pytest.raises(ValueError):
        to_tensor(arr.astype(np.float32))


def test_batch_conversion_matches_single_and_round_trips():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    x = to_tensor_batch(batch)
    assert x.shape == (4, 3, 6, 6) and x.is_contiguous()
    assert torch.equal(x, torch.stack([to_tensor(b) for b in batch]))
    assert np.array_equal(to_uint8(x), batch)
    mask = torch.tensor([True, False, True, False])
    flipped = flip_batch(x.clone(), mask)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
