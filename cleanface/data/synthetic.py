"""Procedurally drawn synthetic faces, and LFW-style verification pairs over them.

Each identity is a random vector of facial geometry and colours: face outline
(superellipse width, height, squareness, chin taper), skin tone, ears, eye spacing,
size, height and iris colour, brow length, thickness, angle and arch, nose length,
width and style, mouth width, height, lip thickness and resting curve, hair style,
colour and hairline, and sometimes glasses, a beard or a mole.

Each image of an identity adds nuisance: shift, scale, in-plane rotation, a fake yaw
(features slide sideways, the far ear hides), expression (mouth curve and opening,
brow raise, eye openness), a random textured background, a lighting gradient, a
global colour cast and brightness, blur and sensor noise. Global colour is dominated
by nuisance, so the mean colour of an image says little about who it shows, while
the geometry stays identity-specific.

Layout (readable by :func:`cleanface.data.folder.read_folder`, and by the LFW pair
reader)::

    out/<prefix>_<NNNN>/<prefix>_<NNNN>_<MMMM>.png

``NNNN`` is the identity number (``first_identity + k``, at least four digits), ``MMMM``
the 1-based image number (four digits). Pixels are a function of ``(seed, identity name,
image number)`` only, and PNG encoding is deterministic: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cleanface._atomic import atomic_write_json, atomic_write_text, staging_dir
from cleanface.errors import ConfigError, DataError
from cleanface.progress import make_progress

_SKIN_DARK = np.array([88, 56, 40], dtype=np.float64)
_SKIN_LIGHT = np.array([246, 218, 194], dtype=np.float64)
_IRIS = [(92, 56, 30), (55, 35, 22), (70, 110, 170), (80, 125, 80), (120, 125, 130), (130, 100, 50)]
_HAIR = [(20, 18, 18), (60, 40, 28), (110, 72, 40), (200, 170, 100), (150, 70, 35), (150, 150, 150), (225, 225, 220)]
_HAIR_STYLES = ("bald", "short", "long", "bangs", "side", "afro")


@dataclass(frozen=True)
class FaceSpec:
    """The identity-specific geometry and colours of one synthetic person (face units: half-height 1)."""

    face_rx: float
    face_ry: float
    squareness: float
    chin: float
    skin: tuple[float, float, float]
    ear: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: tuple[int, int, int]
    iris_r: float
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_angle: float
    brow_arch: float
    nose_len: float
    nose_w: float
    nose_style: int
    mouth_y: float
    mouth_w: float
    lip: float
    mouth_curve: float
    lip_color: tuple[float, float, float]
    hair_style: str
    hair: tuple[float, float, float]
    hairline: float
    glasses: int  # 0 none, 1 round, 2 rectangular
    beard: int  # 0 none, 1 full, 2 goatee, 3 moustache
    mole: tuple[float, float] | None


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded from ``keys`` (strings hashed, so names map to stable seeds)."""
    words = []
    for k in keys:
        if isinstance(k, str):
            words.extend(np.frombuffer(hashlib.sha256(k.encode("utf-8", "surrogateescape")).digest()[:8], dtype=np.uint32).tolist())
        else:
            words.append(int(k) & 0xFFFFFFFF)
            words.append((int(k) >> 32) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def random_face(rng: np.random.Generator) -> FaceSpec:
    """Draw one identity's :class:`FaceSpec`."""
    u = rng.uniform
    skin = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * u(0.0, 1.0) + rng.normal(0, 8, 3)
    hair = np.array(_HAIR[rng.integers(len(_HAIR))], dtype=np.float64) + rng.normal(0, 10, 3)
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([30, 0, 0])
    return FaceSpec(
        face_rx=u(0.68, 0.9),
        face_ry=1.0,
        squareness=u(2.0, 3.4),
        chin=u(0.0, 0.45),
        skin=tuple(np.clip(skin, 0, 255)),
        ear=u(0.1, 0.22),
        eye_y=u(-0.28, -0.02),
        eye_dx=u(0.26, 0.42),
        eye_w=u(0.1, 0.19),
        eye_h=u(0.045, 0.09),
        iris=_IRIS[rng.integers(len(_IRIS))],
        iris_r=u(0.45, 0.75),
        brow_gap=u(0.08, 0.2),
        brow_len=u(0.16, 0.3),
        brow_thick=u(0.02, 0.07),
        brow_angle=u(-0.3, 0.35),
        brow_arch=u(-0.02, 0.07),
        nose_len=u(0.16, 0.36),
        nose_w=u(0.07, 0.18),
        nose_style=int(rng.integers(3)),
        mouth_y=u(0.38, 0.6),
        mouth_w=u(0.2, 0.42),
        lip=u(0.025, 0.075),
        mouth_curve=u(-0.05, 0.09),
        lip_color=tuple(np.clip(lip, 0, 255)),
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
        hair=tuple(np.clip(hair, 0, 255)),
        hairline=u(-0.72, -0.42),
        glasses=int(rng.choice(3, p=[0.75, 0.125, 0.125])),
        beard=int(rng.choice(4, p=[0.7, 0.1, 0.1, 0.1])),
        mole=(float(u(-0.5, 0.5)), float(u(-0.1, 0.6))) if rng.random() < 0.3 else None,
    )


# -- drawing ----------------------------------------------------------------------------
def _c(color: tuple[float, ...], scale: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * scale)))) for v in color[:3])  # type: ignore[return-value]


def _outline(f: FaceSpec, rx: float, n: int = 40) -> np.ndarray:
    """Face outline points (n, 2) in face units: a superellipse whose lower half tapers to the chin."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = 2.0 / f.squareness
    x = rx * np.sign(c) * np.abs(c) ** p
    y = f.face_ry * np.sign(s) * np.abs(s) ** p
    lower = np.clip(y / f.face_ry, 0, 1)
    x = x * (1 - f.chin * lower**2)
    return np.stack([x, y], axis=1)


class _Canvas:
    """An ImageDraw on a ``side`` x ``side`` layer addressed in face units: origin at the centre, ``0.3 * side`` pixels per unit."""

    def __init__(self, layer: Image.Image, side: int) -> None:
        self.draw = ImageDraw.Draw(layer)
        self.cx = self.cy = side / 2
        self.unit = side * 0.3  # pixels per face unit

    def point(self, x: float, y: float) -> tuple[float, float]:
        """The pixel position of face point (x, y)."""
        return (self.cx + x * self.unit, self.cy + y * self.unit)

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        """The pixel bounding box of the ellipse or rectangle centred at (x, y) with half-sizes rx, ry."""
        cx, cy, unit = self.cx, self.cy, self.unit
        return [cx + (x - rx) * unit, cy + (y - ry) * unit, cx + (x + rx) * unit, cy + (y + ry) * unit]

    def width(self, v: float) -> int:
        """A line width of ``v`` face units in pixels, at least 1."""
        return max(1, round(v * self.unit))


@dataclass(frozen=True)
class _Pose:
    """This image's head pose: yaw in [-1, 1], the sideways shift of the features, the face half-width and hairline."""

    yaw: float
    shift: float
    rx: float
    hairline: float


def _draw_face(f: FaceSpec, rng: np.random.Generator, side: int) -> Image.Image:
    """The face of ``f`` with this image's expression and yaw, on a transparent ``side`` x ``side`` layer.

    Drawn back to front: back hair, ears and face, hair, beard, eyes and brows, nose,
    mouth, then mole and glasses. The draws from ``rng``, in order: yaw, hairline,
    eye openness and brow raise, the two gazes, the mouth curve, width and opening.
    """
    layer = Image.new("RGBA", (side, side), (*_c(f.skin), 0))
    canvas = _Canvas(layer, side)
    yaw = rng.uniform(-1, 1)
    pose = _Pose(
        yaw=yaw,
        shift=0.1 * yaw,  # features slide towards the side the head turns to
        rx=f.face_rx * (1 - 0.08 * abs(yaw)),
        hairline=f.hairline + rng.uniform(-0.03, 0.03),
    )
    pts = _draw_head(canvas, f, pose)
    if f.hair_style != "bald":
        _draw_hair(canvas, f, pose, pts)
    if f.beard:
        _draw_beard(canvas, f, pose, pts)
    _draw_eyes(canvas, f, pose, rng)
    _draw_nose(canvas, f, pose)
    _draw_mouth(canvas, f, pose, rng)
    if f.mole is not None:
        canvas.draw.ellipse(canvas.box(f.mole[0] * pose.rx + pose.shift, f.mole[1], 0.025, 0.025), fill=(60, 40, 30))
    if f.glasses:
        _draw_glasses(canvas, f, pose)
    return layer


def _draw_head(canvas: _Canvas, f: FaceSpec, pose: _Pose) -> np.ndarray:
    """The hair behind the head (afro, long), the ears (the far one hidden by a strong yaw) and the face; its outline points."""
    d, box, rx, shift = canvas.draw, canvas.box, pose.rx, pose.shift
    hair = _c(f.hair)
    if f.hair_style == "afro":
        d.ellipse(box(0, -0.25, rx + 0.35, f.face_ry * 0.95), fill=hair)
    if f.hair_style == "long":
        d.rectangle(box(0, 0.15, rx + 0.12, 0.75), fill=hair)
    for sgn in (-1, 1):
        if sgn * pose.yaw < -0.6:
            continue
        d.ellipse(box(sgn * rx * 0.98 + shift * 0.3, f.eye_y + 0.12, f.ear * 0.55, f.ear), fill=_c(f.skin, 0.78))
    pts = _outline(f, rx)
    d.polygon([canvas.point(x + shift * 0.2 * (1 - abs(x) / max(rx, 1e-6)), y) for x, y in pts], fill=_c(f.skin))
    return pts


def _draw_hair(canvas: _Canvas, f: FaceSpec, pose: _Pose, pts: np.ndarray) -> None:
    """The hair cap above the hairline, and the bangs, side parting or long strands of the style."""
    d, P, box, rx, hairline = canvas.draw, canvas.point, canvas.box, pose.rx, pose.hairline
    hair = _c(f.hair)
    cap = [P(x, y) for x, y in pts if y < hairline + 0.05]
    top = min(y for _, y in pts)
    if len(cap) > 2:
        d.polygon(cap + [P(rx * 0.9, hairline), P(-rx * 0.9, hairline)], fill=hair)
    d.ellipse(box(0, top + 0.1, rx * 0.92, 0.2), fill=hair)
    if f.hair_style == "bangs":
        d.rectangle(box(0, hairline + 0.12, rx * 0.85, 0.12), fill=hair)
    elif f.hair_style == "side":
        d.polygon([P(-rx, hairline - 0.1), P(rx * 0.3, hairline - 0.1), P(-rx * 0.85, hairline + 0.3)], fill=hair)
    elif f.hair_style == "long":
        for sgn in (-1, 1):
            d.rectangle(box(sgn * (rx + 0.02), 0.0, 0.12, 0.7), fill=hair)


def _draw_beard(canvas: _Canvas, f: FaceSpec, pose: _Pose, pts: np.ndarray) -> None:
    """A full beard (the outline below the mouth) or a goatee, and a moustache with either; a moustache alone for style 3."""
    d, box, shift = canvas.draw, canvas.box, pose.shift
    beard = _c(f.hair, 0.9)
    if f.beard == 1:
        d.polygon([canvas.point(x, y) for x, y in pts if y > f.mouth_y - 0.25] + [canvas.point(-pose.rx * 0.8, f.mouth_y - 0.25)], fill=beard)
    elif f.beard == 2:
        d.ellipse(box(shift, f.mouth_y + 0.2, f.mouth_w * 0.45, 0.16), fill=beard)
    d.rectangle(box(shift, f.mouth_y - 0.08, f.mouth_w * 0.55, 0.035), fill=beard)


def _draw_eyes(canvas: _Canvas, f: FaceSpec, pose: _Pose, rng: np.random.Generator) -> None:
    """Both eyes and brows (left first) with this image's expression: openness and brow raise, then a gaze per eye."""
    openness = rng.uniform(0.55, 1.15) if rng.random() > 0.05 else 0.12
    raise_ = rng.uniform(-0.03, 0.05)
    for sgn in (-1, 1):
        ex = sgn * f.eye_dx + pose.shift
        _draw_eye(canvas, f, ex, f.eye_h * openness, rng)
        _draw_brow(canvas, f, ex, sgn, raise_)


def _draw_eye(canvas: _Canvas, f: FaceSpec, ex: float, eh: float, rng: np.random.Generator) -> None:
    """One eye centred at ``ex``, open to half-height ``eh``: the white, iris and pupil (moved by a random gaze; hidden when nearly shut), the lid line."""
    d, box = canvas.draw, canvas.box
    d.ellipse(box(ex, f.eye_y, f.eye_w, eh), fill=(236, 236, 232))
    ir = min(f.eye_w, f.eye_h) * f.iris_r * 1.4
    gaze = rng.uniform(-0.02, 0.02)
    if eh > 0.02:
        d.ellipse(box(ex + gaze, f.eye_y, ir, min(ir, eh)), fill=f.iris)
        d.ellipse(box(ex + gaze, f.eye_y, ir * 0.45, min(ir * 0.45, eh)), fill=(10, 10, 10))
    d.arc(box(ex, f.eye_y, f.eye_w, eh), 180, 360, fill=_c(f.skin, 0.45), width=canvas.width(0.02))


def _draw_brow(canvas: _Canvas, f: FaceSpec, ex: float, sgn: int, raise_: float) -> None:
    """The brow over the eye at ``ex`` (``sgn`` -1 left, 1 right): from the inner end outwards, tilted by the brow angle, arched upwards."""
    by = f.eye_y - f.eye_h - f.brow_gap - raise_
    inner = (ex - sgn * f.brow_len * 0.45, by)
    outer = (ex + sgn * f.brow_len * 0.55, by - f.brow_angle * f.brow_len)
    mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - f.brow_arch)
    P = canvas.point
    canvas.draw.line([P(*inner), P(*mid), P(*outer)], fill=_c(f.hair, 0.7), width=canvas.width(f.brow_thick), joint="curve")


def _draw_nose(canvas: _Canvas, f: FaceSpec, pose: _Pose) -> None:
    """The nose in its style: 0 a bridge line and a base line, 1 a triangle, 2 a round tip with nostrils."""
    d, P, box, w = canvas.draw, canvas.point, canvas.box, canvas.width
    shade = _c(f.skin, 0.78)
    nose_top = f.eye_y + 0.05
    nose_tip = nose_top + f.nose_len
    nx = pose.shift * 1.3
    if f.nose_style == 0:
        d.line([P(nx, nose_top), P(nx + 0.03, nose_tip)], fill=shade, width=w(0.025))
        d.line([P(nx - f.nose_w, nose_tip), P(nx + f.nose_w, nose_tip)], fill=shade, width=w(0.03))
    elif f.nose_style == 1:
        d.polygon([P(nx, nose_top), P(nx - f.nose_w, nose_tip), P(nx + f.nose_w, nose_tip)], fill=shade)
    else:
        d.ellipse(box(nx, nose_tip - 0.02, f.nose_w, 0.05), fill=shade)
        for sgn in (-1, 1):
            d.ellipse(box(nx + sgn * f.nose_w * 0.5, nose_tip, 0.025, 0.018), fill=_c(f.skin, 0.45))


def _draw_mouth(canvas: _Canvas, f: FaceSpec, pose: _Pose, rng: np.random.Generator) -> None:
    """The lips with this image's expression: curve (> 0: smile) and width drawn at random, sometimes open."""
    curve = f.mouth_curve + rng.uniform(-0.07, 0.1)
    mx, my, mw = pose.shift, f.mouth_y, f.mouth_w * rng.uniform(0.9, 1.1)
    if rng.random() < 0.2:  # open mouth
        canvas.draw.ellipse(canvas.box(mx, my + 0.02, mw * 0.7, rng.uniform(0.04, 0.1)), fill=(60, 20, 25))
    lips = [canvas.point(mx + mw * t, my + curve * (1 - 2 * (2 * t) ** 2)) for t in np.linspace(-0.5, 0.5, 9)]
    canvas.draw.line(lips, fill=_c(f.lip_color), width=canvas.width(f.lip), joint="curve")


def _draw_glasses(canvas: _Canvas, f: FaceSpec, pose: _Pose) -> None:
    """Round (1) or rectangular (2) frames around both eyes and the bridge between them."""
    d, P, shift = canvas.draw, canvas.point, pose.shift
    frame = (25, 25, 30)
    for sgn in (-1, 1):
        b = canvas.box(sgn * f.eye_dx + shift, f.eye_y, f.eye_w * 1.35, f.eye_w * 1.0)
        if f.glasses == 1:
            d.ellipse(b, outline=frame, width=canvas.width(0.025))
        else:
            d.rectangle(b, outline=frame, width=canvas.width(0.025))
    d.line([P(-f.eye_dx + f.eye_w * 1.35 + shift, f.eye_y), P(f.eye_dx - f.eye_w * 1.35 + shift, f.eye_y)], fill=frame, width=canvas.width(0.025))


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random textured background, float32 (side, side, 3) in [0, 255]."""
    kind = rng.integers(3)
    if kind == 0:  # smooth blobs: a coarse random grid, upsampled
        g = rng.integers(2, 6)
        coarse = Image.fromarray(rng.integers(0, 256, (g, g, 3), dtype=np.uint8), "RGB")
        return np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    if kind == 2:  # stripes
        t = 0.5 + 0.5 * np.sin(t * rng.uniform(6, 30) + rng.uniform(0, 2 * np.pi))
    else:
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]).astype(np.float32)


def render_face(face: FaceSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    """One image of ``face`` with random nuisance: uint8 (size, size, 3)."""
    side = 2 * size  # drawn at twice the resolution, then reduced (anti-aliasing)
    layer = _draw_face(face, rng, side)
    angle = rng.uniform(-15, 15)
    scale = rng.uniform(0.82, 1.12)
    tx, ty = rng.uniform(-0.08, 0.08, 2) * side
    # inverse affine map: output pixel -> layer pixel (rotation and scale about the centre)
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    c = side / 2
    ox, oy = c + tx, c + ty
    coeffs = (cos, sin, c - cos * ox - sin * oy, -sin, cos, c + sin * ox - cos * oy)
    layer = layer.transform((side, side), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    canvas = Image.fromarray(_background(rng, side).astype(np.uint8), "RGB").convert("RGBA")
    canvas = Image.alpha_composite(canvas, layer).convert("RGB").resize((size, size), Image.Resampling.BOX)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0) * size / 64))
    x = np.asarray(canvas, dtype=np.float32)
    # lighting gradient, colour cast and brightness, sensor noise
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    d = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.8) * (np.cos(d) * xx + np.sin(d) * yy)
    cast = rng.uniform(0.7, 1.3, 3) * rng.uniform(0.65, 1.3)
    x = x * light[..., None] * cast[None, None, :].astype(np.float32)
    x += rng.normal(0, rng.uniform(0, 7), x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def identity_name(prefix: str, number: int) -> str:
    """``<prefix>_<number:04d>``."""
    return f"{prefix}_{int(number):04d}"


def image_name(identity: str, number: int, ext: str = ".png") -> str:
    """``<identity>/<identity>_<number:04d><ext>`` (1-based ``number``, the LFW naming)."""
    return f"{identity}/{identity}_{int(number):04d}{ext}"


def make_synthetic(
    out: str | os.PathLike,
    *,
    identities: int = 100,
    per_identity: int = 20,
    size: int = 64,
    seed: int = 0,
    first_identity: int = 0,
    name_prefix: str = "id",
    overwrite: bool = False,
    silent: bool = False,
) -> Path:
    """Draw ``identities`` x ``per_identity`` synthetic faces into the image folder ``out``.

    Parameters
    ----------
    out : path-like
        Output folder, ``out/<prefix>_<NNNN>/<prefix>_<NNNN>_<MMMM>.png``; built under a
        staging name and moved into place when complete.
    identities, per_identity : int
        Number of people, and images per person.
    size : int
        Image side in pixels (at least 16).
    seed : int
        Faces and nuisance are functions of ``(seed, identity name, image number)``.
    first_identity : int
        Number of the first identity (``NNNN``). Two calls whose names do not overlap
        (another ``first_identity`` range or ``name_prefix``) have disjoint names; calls
        with different seeds draw different people even under the same names.
    name_prefix : str
        Identity name prefix (letters, digits, ``-``, ``_``).
    overwrite : bool
        Replace a non-empty ``out``.
    silent : bool
        No progress bar.

    Returns
    -------
    Path
        ``out``. A ``synthetic.json`` beside the identity folders records the settings.
    """
    if identities < 1 or per_identity < 1:
        raise ConfigError(f"identities and per_identity must be at least 1, got {identities} and {per_identity}")
    if size < 16:
        raise ConfigError(f"synthetic image size must be at least 16 pixels, got {size}")
    if first_identity < 0:
        raise ConfigError(f"first_identity must be 0 or more, got {first_identity}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name_prefix):
        raise ConfigError(f"name_prefix must be letters, digits, '-' or '_' (starting with a letter or digit), got {name_prefix!r}")
    out = Path(out)
    with staging_dir(out, overwrite=overwrite) as stage, make_progress(silent=silent) as progress:
        task = progress.add_task(f"drawing {identities} synthetic identities", total=identities)
        for k in range(identities):
            name = identity_name(name_prefix, first_identity + k)
            face = random_face(_rng(seed, name, 0))
            (stage / name).mkdir(exist_ok=True)
            for j in range(1, per_identity + 1):
                target = stage / image_name(name, j)
                target.write_bytes(_png(render_face(face, _rng(seed, name, j), size)))
            progress.advance(task)
        atomic_write_json(
            stage / "synthetic.json",
            {"identities": identities, "per_identity": per_identity, "size": size, "seed": seed, "first_identity": first_identity, "name_prefix": name_prefix},
        )
    return out


# -- verification pairs -------------------------------------------------------------------
_NUMBERED = re.compile(r"^(?P<id>.+)_(?P<n>\d+)\.[A-Za-z0-9]+$")


def _numbered_images(folder: Path) -> dict[str, list[int]]:
    """Image numbers per identity of a folder named ``<id>/<id>_<NNNN>.<ext>``."""
    from cleanface.data.folder import read_folder

    index = read_folder(folder)
    out: dict[str, list[int]] = {}
    for path in index.paths:
        ident, file = path.split("/", 1)
        m = _NUMBERED.match(file)
        if m is None or m.group("id") != ident:
            raise DataError(f"{folder / path} is not named <identity>/<identity>_<number>.<ext>; pairs need LFW-style image names")
        out.setdefault(ident, []).append(int(m.group("n")))
    return out


def make_pairs(
    folder: str | os.PathLike,
    out_pairs_file: str | os.PathLike,
    *,
    num_pairs: int,
    seed: int = 0,
    folds: int = 1,
) -> Path:
    """Write an LFW-style pairs file over an image folder named ``<id>/<id>_<NNNN>.<ext>``.

    Parameters
    ----------
    folder : path-like
        e.g. the output of :func:`make_synthetic`.
    out_pairs_file : path-like
    num_pairs : int
        Total pairs, half matched and half mismatched (rounded down to a multiple of
        ``2 * folds``).
    seed : int
    folds : int
        1 writes the ``pairsDevTest.txt`` layout: a first line ``n``, then ``n`` matched
        lines ``name i j`` and ``n`` mismatched lines ``name1 i name2 j``. More writes the
        ``pairs.txt`` layout: ``folds n``, then each fold's ``n`` matched and ``n`` mismatched.

    Image numbers are the 1-based ``NNNN`` of the file names, so line ``id_0003 1 5``
    means ``id_0003/id_0003_0001.<ext>`` and ``id_0003/id_0003_0005.<ext>``. No pair is
    written twice.

    Returns
    -------
    Path
        ``out_pairs_file``.
    """
    if folds < 1:
        raise ConfigError(f"folds must be at least 1, got {folds}")
    per = num_pairs // (2 * folds)
    if per < 1:
        raise ConfigError(f"num_pairs must be at least {2 * folds} for {folds} fold(s), got {num_pairs}")
    images = _numbered_images(Path(folder))
    names = sorted(images)
    nums = [sorted(images[n]) for n in names]
    total = per * folds  # matched pairs, and as many mismatched
    same_weight = _check_pair_capacity(folder, nums, total)
    rng = np.random.default_rng(seed)
    seen: set[tuple] = set()
    same = _draw_matched(rng, nums, same_weight / same_weight.sum(), total, seen)
    if float(sum(len(v) for v in nums)) ** 2 / 2 < total:
        raise DataError(f"{folder} allows too few mismatched pairs for {total}")
    diff = _draw_mismatched(rng, nums, total, seen)
    if len(same) < total or len(diff) < total:
        raise DataError(f"could not draw {total} distinct matched and mismatched pairs from {folder}; ask for fewer")
    atomic_write_text(out_pairs_file, _pairs_text(names, same, diff, per=per, folds=folds))
    return Path(out_pairs_file)


def _check_pair_capacity(folder: str | os.PathLike, nums: list[list[int]], total: int) -> np.ndarray:
    """Refuse folders with fewer than ``total`` distinct matched pairs or fewer than 2 identities; the matched pairs per identity."""
    sizes = np.array([len(v) for v in nums])
    same_weight = sizes * (sizes - 1) / 2
    if same_weight.sum() < total:
        raise DataError(f"{folder} allows only {int(same_weight.sum())} distinct matched pairs; {total} were asked for")
    if len(nums) < 2:
        raise DataError(f"{folder} has {len(nums)} identity; mismatched pairs need at least 2")
    return same_weight


def _draw_matched(rng: np.random.Generator, nums: list[list[int]], p: np.ndarray, total: int, seen: set[tuple]) -> list[tuple[int, int, int]]:
    """Up to ``total`` distinct matched pairs ``(identity, image number, image number)``: identity by ``p``, two distinct images of it.

    The draws of a pair already in ``seen`` are dropped; every kept pair is added to ``seen``.
    """
    same: list[tuple[int, int, int]] = []
    for _ in range(100 * total + 1000):
        if len(same) == total:
            break
        c = int(rng.choice(len(nums), p=p))
        i, j = sorted(rng.choice(len(nums[c]), size=2, replace=False).tolist())
        key = (c, i, j)
        if key not in seen:
            seen.add(key)
            same.append((c, nums[c][i], nums[c][j]))
    return same


def _draw_mismatched(rng: np.random.Generator, nums: list[list[int]], total: int, seen: set[tuple]) -> list[tuple[int, int, int, int]]:
    """Up to ``total`` distinct mismatched pairs ``(identity, image number, identity, image number)``, identities uniform."""
    diff: list[tuple[int, int, int, int]] = []
    for _ in range(100 * total + 1000):
        if len(diff) == total:
            break
        a, b = sorted(rng.choice(len(nums), size=2, replace=False).tolist())
        i, j = int(rng.integers(len(nums[a]))), int(rng.integers(len(nums[b])))
        key = (a, i, b, j)
        if key not in seen:
            seen.add(key)
            diff.append((a, nums[a][i], b, nums[b][j]))
    return diff


def _pairs_text(names: list[str], same: list[tuple[int, int, int]], diff: list[tuple[int, int, int, int]], *, per: int, folds: int) -> str:
    """The pairs file: the header line, then per fold ``per`` matched and ``per`` mismatched tab-separated lines."""
    lines = [f"{per}" if folds == 1 else f"{folds}\t{per}"]
    for f in range(folds):
        lines += [f"{names[c]}\t{i}\t{j}" for c, i, j in same[f * per : (f + 1) * per]]
        lines += [f"{names[a]}\t{i}\t{names[b]}\t{j}" for a, i, b, j in diff[f * per : (f + 1) * per]]
    return "\n".join(lines) + "\n"
