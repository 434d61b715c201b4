"""Encoded image bytes to pixel arrays, and pixel arrays to network tensors.

Every image that enters cleanface goes through :func:`decode_image`, so training,
embedding and the decode cache see identical pixels:

1. open with Pillow, refusing images larger than :data:`MAX_IMAGE_PIXELS`
   (decompression bombs) before any pixel is decoded;
2. apply the EXIF orientation;
3. convert to RGB (grey ``L``/``1``, palette ``P``, ``LA``/``RGBA`` composited over
   white, 16/32-bit grey ``I;16``/``I``/``F`` scaled to 8 bits, ``CMYK``, ``YCbCr``...);
4. optionally cut the centre square of side ``crop`` source pixels;
5. resize to ``size x size`` with an anti-aliased bicubic filter.

JPEGs are decoded at a reduced DCT scale (Pillow ``draft``) when the result still has
at least the target resolution, which makes decoding several times faster for
downscaled crops without visible loss.

Tensors follow the insightface convention: float32, channels first, ``(x/255 - 0.5) / 0.5``,
so values lie in ``[-1, 1]``.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cleanface.errors import DataError

if TYPE_CHECKING:
    import torch

#: Largest image (width x height, in pixels) cleanface decodes: 8192 x 8192, about 67
#: megapixels (200 MB as RGB). Anything larger is refused as a likely decompression
#: bomb. The same bound is set as ``PIL.Image.MAX_IMAGE_PIXELS`` for the process, so
#: Pillow itself refuses images above twice that size when they are merely opened.
MAX_IMAGE_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Background that transparent pixels are composited onto (white).
ALPHA_BACKGROUND = (255, 255, 255)

_RESAMPLE = Image.Resampling.BICUBIC


def _where(where: str | None) -> str:
    return where if where else "image"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to ``RGB``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range to 8-bit range
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "La", "RGBa", "RGBA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV...


def _draft_scale(img: Image.Image, size: int, crop: int | None) -> None:
    """Ask a JPEG decoder for the smallest DCT scale that keeps the output at full resolution."""
    if img.format != "JPEG":
        return
    w, h = img.size
    side = min(w, h) if crop is None else min(crop, w, h)
    # the decoded image must keep at least `size` pixels across the region we resize
    factor = size / max(side, 1)
    if factor >= 1:
        return
    target = (max(1, math.ceil(w * factor)), max(1, math.ceil(h * factor)))
    img.draft("RGB", target)


def decode_image(data: bytes, *, size: int = 112, crop: int | None = None, where: str | None = None) -> np.ndarray:
    """Decode encoded image bytes to a square RGB array.

    Parameters
    ----------
    data : bytes
        An encoded image (JPEG, PNG, BMP, WebP, PGM/PPM, TIFF...).
    size : int
        Side of the output in pixels.
    crop : int or None
        Side, in source pixels, of the centre square cut before resizing (clamped to
        the image's shorter side). None resizes the whole image to ``size x size``
        (non-square images are stretched).
    where : str, optional
        The image's location, used in error messages.

    Returns
    -------
    ndarray of shape (size, size, 3), uint8
        RGB pixels.

    Raises
    ------
    DataError
        Empty, truncated or unidentifiable data, or an image above :data:`MAX_IMAGE_PIXELS`.
    """
    if size < 1:
        raise DataError(f"image size must be at least 1, got {size}")
    if crop is not None and crop < 1:
        raise DataError(f"crop must be at least 1 pixel, got {crop}")
    if not data:
        raise DataError(f"cannot decode {_where(where)}: zero-byte file")
    try:
        with warnings.catch_warnings():  # the size is checked just below, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise DataError(
                f"cannot decode {_where(where)}: {w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,} (possible decompression bomb)"
            )
        _draft_scale(img, size, crop)
        img.load()
        scale = img.size[0] / w  # below 1 when the JPEG draft decoded at a reduced scale
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        cw, ch = img.size
        if crop is not None:
            side = min(cw, ch, max(1, round(crop * scale)))
            left = (cw - side) // 2
            top = (ch - side) // 2
            img = img.crop((left, top, left + side, top + side))
        if img.size != (size, size):
            img = img.resize((size, size), _RESAMPLE)
        arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot decode {_where(where)}: {exc} (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot decode {_where(where)}: not an image (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        raise DataError(f"cannot decode {_where(where)}: truncated or corrupt image ({exc})") from None
    if arr.shape != (size, size, 3):  # defensive: should not happen after convert("RGB")
        raise DataError(f"cannot decode {_where(where)}: unexpected pixel array of shape {arr.shape}")
    return arr


# -- tensors --------------------------------------------------------------------------
# -- is this file an image? ---------------------------------------------------------------
#: Leading bytes that identify an image on their own (JPEG, PNG; WebP is checked beside them). BMP and
#: PBM/PGM/PPM start with two printable letters that a text file can start with too: their header is parsed.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def check_image_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a usable image file, or None. Reads only the header (no pixel is decoded)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "zero-byte file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size  # header parsed by open
    except Image.DecompressionBombError:
        return f"too many pixels (possible decompression bomb; the limit is {MAX_IMAGE_PIXELS:,})"
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except OSError as exc:
        if exc.errno is None:  # raised by PIL itself, e.g. "Truncated File Read"
            return f"truncated or corrupt image header: {exc}"
        return f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # PIL raises assorted errors on corrupt headers
        return f"corrupt image header: {type(exc).__name__}"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} pixels: too many (possible decompression bomb; the limit is {MAX_IMAGE_PIXELS:,})"
    return None


def not_an_image(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not an image file, or None: a quick look at its first bytes, else :func:`check_image_file`.

    Costs one small read for the usual formats (JPEG, PNG, WebP), so it can guard every
    file a dataset writer places without slowing it down; other files have their header parsed.

    Raises
    ------
    OSError
        ``path`` cannot be opened (missing, unreadable).
    """
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return check_image_file(path)


def not_image_bytes(data: bytes) -> str | None:
    """Why ``data`` is not an encoded image, or None: its first bytes, else its header parsed (no pixel decoded)."""
    if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    if not data:
        return "zero bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)):
                return None
    except Image.DecompressionBombError:
        return f"too many pixels (possible decompression bomb; the limit is {MAX_IMAGE_PIXELS:,})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return "not an image (PIL cannot identify it)"


def to_tensor(arr: np.ndarray) -> "torch.Tensor":
    """One image: uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1], as ``(x/255 - 0.5) / 0.5``."""
    import torch

    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:  # e.g. a read-only memmap row
        arr = np.array(arr)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_tensor_batch(batch: "np.ndarray | torch.Tensor") -> "torch.Tensor":
    """A batch: uint8 (B, H, W, 3) -> contiguous float32 (B, 3, H, W) in [-1, 1]."""
    import torch

    if isinstance(batch, np.ndarray):
        if not batch.flags.writeable or not batch.flags.c_contiguous:
            batch = np.array(batch)
        t = torch.from_numpy(batch)
    else:
        t = batch
    if t.ndim != 4 or t.shape[3] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch of shape (B, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    out = torch.empty((t.shape[0], 3, t.shape[1], t.shape[2]), dtype=torch.float32)
    out.copy_(t.permute(0, 3, 1, 2))
    return out.div_(127.5).sub_(1.0)


def flip_batch(images: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mirror (left-right) the images of ``images`` (B, C, H, W) where ``mask`` (B,) bool is True, in place."""
    if mask.any():
        images[mask] = images[mask].flip(-1)
    return images


def to_uint8(images: "torch.Tensor") -> np.ndarray:
    """Inverse of :func:`to_tensor_batch`: float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    import torch

    x = images.detach().float().add(1.0).mul(127.5).round().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
