"""Thumbnails and links to the original images, for the pages of a report.

Thumbnails are small JPEGs written once into ``report/thumbs/<shard>/<index>.jpg``
(``shard = index // 1000``, so no folder holds more than a thousand files) and reused
by every page and by later renders. Each thumbnail links to its original image: a
relative path from the report folder to the image file for folder and manifest
datasets; for RecordIO, a full-size copy written into ``report/images/``. With
``placeholder`` no image is read or written: pages show a grey CSS box instead.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

THUMB_SIZE = 64
ACTION_CLASS = {"keep": "k", "drop": "d", "relabel": "r", "merge": "m", "dedup": "u", "new-identity": "n"}
_REC_LOCATION = re.compile(r"^(?P<rec>.+\.rec)@(?P<offset>\d+)$")


@dataclass
class Thumb:
    """One face on a page: ``src``/``href`` are URL-quoted paths relative to the report folder (or None)."""

    index: int
    action: str
    caption: str
    src: str | None = None
    href: str | None = None

    def html(self, root: str) -> Markup:
        """The ``<figure>`` of this thumbnail; ``root`` leads from the page back to the report folder.

        The markup is kept short (it repeats a million times at scale): the figure's
        class is the action's one-letter code (:data:`ACTION_CLASS`), the caption is
        its text.
        """
        if self.src:
            image = Markup('<img src="{}" loading="lazy" width="64" height="64" alt="">').format(root + self.src)
        else:
            image = Markup("<span></span>")
        if self.href:
            image = Markup('<a href="{}">{}</a>').format(root + self.href, image)
        return Markup('<figure class="{}">{}{}</figure>').format(ACTION_CLASS.get(self.action, "k"), image, self.caption)


def rec_location(location: str) -> tuple[str, int] | None:
    """``("file.rec", offset)`` for a RecordIO location ``file.rec@offset``; None for a file path."""
    match = _REC_LOCATION.match(location)
    if match is None:
        return None
    return match["rec"], int(match["offset"])


class ThumbWriter:
    """Makes the thumbnails and original-image links of one report.

    Parameters
    ----------
    stage : Path
        The report folder being written (its staging name).
    final : Path
        The report folder's final path (relative links are computed from it).
    data : DatasetIndex, optional
        The dataset the decisions refer to; images are then read with
        ``data.read_bytes(index)``, else from the ``location`` of each row.
    placeholder : bool
        Draw grey boxes: read and write no image.
    """

    def __init__(self, stage: Path, final: Path, *, data: object | None = None, placeholder: bool = False, size: int = THUMB_SIZE) -> None:
        self.stage, self.final = stage, Path(os.path.abspath(final))
        self.data = data
        self.placeholder = placeholder
        self.size = size
        self.written = 0
        self.failed = 0
        self._made: set[Path] = set()

    def thumb(self, index: int, location: str, action: str, caption: str) -> Thumb:
        """The :class:`Thumb` of dataset sample ``index`` (writing its JPEG when not there yet)."""
        thumb = Thumb(index=int(index), action=action, caption=caption)
        rec = rec_location(location)
        if rec is None and self._is_file(index, location):
            thumb.href = self._link(self._file_path(index, location))
        if self.placeholder:
            return thumb
        rel = f"thumbs/{index // 1000}/{index}.jpg"
        target = self.stage / rel
        if target in self._made or target.is_file():
            thumb.src = rel
            if rec is not None:
                thumb.href = self._existing_copy(index)
            return thumb
        data = self._read(index, location)
        if data is None:
            self.failed += 1
            thumb.caption += " (unreadable)"
            return thumb
        if not self._write_thumb(data, target):
            self.failed += 1
            thumb.caption += " (unreadable)"
            return thumb
        thumb.src = rel
        if rec is not None:
            thumb.href = self._write_copy(index, data)
        return thumb

    # -- reading -------------------------------------------------------------------------
    def _file_path(self, index: int, location: str) -> str:
        if self.data is not None and getattr(self.data, "kind", "rec") != "rec":
            return str(self.data.abspath(index))  # type: ignore[attr-defined]
        return location

    def _is_file(self, index: int, location: str) -> bool:
        if self.data is not None:
            return getattr(self.data, "kind", "rec") != "rec"
        return os.path.isfile(location)

    def _read(self, index: int, location: str) -> bytes | None:
        try:
            if self.data is not None:
                return self.data.read_bytes(index)  # type: ignore[attr-defined]
            rec = rec_location(location)
            if rec is not None:
                from cleanface.data.recordio import read_image_at

                return read_image_at(rec[0], rec[1])
            with open(location, "rb") as handle:
                return handle.read()
        except Exception:  # an unreadable image becomes a captioned box, never a failed report
            return None

    # -- writing -------------------------------------------------------------------------
    def _write_thumb(self, data: bytes, target: Path) -> bool:
        from PIL import Image, ImageOps

        try:
            with Image.open(io.BytesIO(data)) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
                buf = io.BytesIO()
                image.save(buf, "JPEG", quality=78, optimize=True)
        except Exception:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.getvalue())
        self._made.add(target)
        self.written += 1
        return True

    def _copy_rel(self, index: int, ext: str) -> str:
        return f"images/{index // 1000}/{index}.{ext}"

    def _existing_copy(self, index: int) -> str | None:
        folder = self.stage / "images" / str(index // 1000)
        for ext in ("jpg", "png", "bmp", "gif", "webp", "bin"):
            if (folder / f"{index}.{ext}").is_file():
                return self._copy_rel(index, ext)
        return None

    def _write_copy(self, index: int, data: bytes) -> str:
        ext = _image_extension(data)
        rel = self._copy_rel(index, ext)
        target = self.stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return rel

    def _link(self, path: str) -> str:
        # percent-encode the file name's bytes: names that are not UTF-8 (kept with surrogate escapes) still link
        return quote(os.fsencode(os.path.relpath(os.path.abspath(path), self.final).replace(os.sep, "/")))


def _image_extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"GIF8":
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"
