"""Embed every image of a cleanface dataset with dlib's pretrained face-recognition ResNet.

dlib's ``dlib_face_recognition_resnet_model_v1`` (128-d, trained by Davis King on about 3
million faces of people disjoint from LFW) and its 5-point landmark model come in the PyPI
package ``face-recognition-models``; ``dlib-bin`` runs them. Both are in the ``bench`` extra
only (``pip install -e .[bench]``); nothing is downloaded at run time.

Two ways to get the 150x150 chip the network expects:

* ``--mode detect`` (for in-the-wild or LFW-style images, e.g. LFW's 250x250 deep-funneled
  JPEGs): dlib's HOG detector, largest face (upsampled once when none is found at the
  original size), 5 landmarks, ``dlib.get_face_chip(img, shape, 150, padding=0.25)``;
* ``--mode chip`` (for faces already aligned, e.g. ``../shared/data/celeba``, 112x112 chips
  made with ``get_face_chip`` at padding 0.2): the whole image resized to 150x150 is the chip,
  with no detection.

``--mode detect`` falls back, for an image without a detected face, to the 5 landmarks found
inside a centre box (half the shorter side), and lists it under ``no_face``.

Output, in cleanface's embeddings format (``purify --embeddings OUT`` reads it):
``OUT/embeddings.npy`` (N, 128) float32, L2-normalised, and ``OUT/embeddings.json``
``{"fingerprint", "count", "dtype", "dim", "model", "mode", "jitter", "no_face": [indices],
"failed": [indices], "seconds", "images_per_s"}``. Work is saved in chunks under
``OUT/chunks/``; an interrupted run resumes from its last finished chunk.

``--centre`` also writes ``OUT/centred/`` (same format): the embeddings minus their mean over
the dataset, back to unit length. dlib's raw descriptors all lie in a narrow cone, where
purify's fixed angles do not apply (see ``benchmarks/pretrained_noise.py``); centred, they do.

Usage::

    python benchmarks/dlib_embed.py DATA OUT [--mode detect|chip] [--jitter 0] [--chunk 500] [--centre]
    cleanface purify DATA --embeddings OUT/centred --out CLEAN   # sub-centres by spherical k-means
"""

from __future__ import annotations

import argparse
import importlib.util
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "dlib_face_recognition_resnet_model_v1"
MODES = ("detect", "chip")


def model_dir() -> Path:
    """The ``models/`` folder of the installed ``face-recognition-models`` package, found without importing it.

    (Importing it needs ``pkg_resources``, which recent setuptools no longer ship.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("face-recognition-models is not installed: pip install -e '.[bench]' (or: pip install dlib-bin face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (path / f"{MODEL}.dat").is_file():
        sys.exit(f"{path / (MODEL + '.dat')} is missing; reinstall face-recognition-models")
    return path


class DlibEmbedder:
    """HOG detector + 5-point landmarks + the ResNet, loaded once."""

    def __init__(self, mode: str = "detect", jitter: int = 0, models: Path | None = None) -> None:
        try:
            import dlib
        except ImportError:
            sys.exit("dlib is not installed: pip install -e '.[bench]' (or: pip install dlib-bin)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        models = models or model_dir()
        self.dlib, self.mode, self.jitter = dlib, mode, int(jitter)
        self.net = dlib.face_recognition_model_v1(str(models / f"{MODEL}.dat"))
        if mode == "detect":
            self.detector = dlib.get_frontal_face_detector()
            self.shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))

    def chip(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """The 150x150 aligned chip of an RGB uint8 image and whether a face was detected."""
        dlib = self.dlib
        if self.mode == "chip":
            from PIL import Image

            if rgb.shape[:2] != (150, 150):
                rgb = np.asarray(Image.fromarray(rgb).resize((150, 150), Image.BILINEAR))
            return np.ascontiguousarray(rgb), True
        faces = self.detector(rgb, 0)
        if len(faces) == 0:
            faces = self.detector(rgb, 1)
        found = len(faces) > 0
        if found:
            box = max(faces, key=lambda r: r.width() * r.height())
        else:  # the centre box: LFW-style images hold the face in the centre
            h, w = rgb.shape[:2]
            side = min(h, w) // 2
            top, left = (h - side) // 2, (w - side) // 2
            box = dlib.rectangle(left, top, left + side, top + side)
        shape = self.shapes(rgb, box)
        return np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25)), found

    def descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """(B, 128) float32, L2-normalised (dlib's descriptors are close to, not exactly, unit length)."""
        if not chips:
            return np.zeros((0, 128), dtype=np.float32)
        out = np.asarray(self.net.compute_face_descriptor(chips, self.jitter), dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def decode_rgb(data: bytes) -> np.ndarray:
    """Full-resolution RGB uint8 (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def known_descriptors(reuse, meta: dict) -> dict[str, np.ndarray]:
    """Descriptors already computed, keyed by the SHA-1 of the image bytes: ``reuse`` is a list of (data, embeddings dir)
    pairs written by :func:`embed_dataset` with the same model, mode and jitter (others are ignored). Images that failed
    or had no detected face there are left out: they are embedded again and listed again."""
    from cleanface.data.open import open_dataset

    known: dict[str, np.ndarray] = {}
    for data, emb_dir in reuse or []:
        done = json.loads((Path(emb_dir) / "embeddings.json").read_text())
        if any(done.get(k) != meta[k] for k in ("model", "mode", "jitter")):
            continue
        index = open_dataset(data, silent=True)
        emb = np.load(Path(emb_dir) / "embeddings.npy")
        skip = set(done.get("failed", [])) | set(done.get("no_face", []))  # embedded again, so that no_face stays right
        for i in range(len(index)):
            if i not in skip:
                known[hashlib.sha1(index.read_bytes(i)).hexdigest()] = emb[i]
    return known


def embed_dataset(data: str | os.PathLike, out: str | os.PathLike, *, mode: str = "detect", jitter: int = 0, chunk: int = 500,
                  silent: bool = False, reuse=None) -> dict:
    """Embed every image of ``data`` (any format :func:`cleanface.data.open.open_dataset` reads) into ``out``; returns the metadata.

    Images whose bytes were embedded before (``reuse``: see :func:`known_descriptors`) take the stored descriptor."""
    from cleanface._atomic import atomic_write_json
    from cleanface.data.open import open_dataset
    from cleanface.progress import make_progress

    out = Path(out)
    index = open_dataset(data, silent=True)
    n = len(index)
    meta = {"fingerprint": index.fingerprint(), "count": n, "dtype": "float32", "dim": 128, "model": MODEL, "mode": mode, "jitter": int(jitter)}
    final = out / "embeddings.json"
    if final.is_file():
        done = json.loads(final.read_text())
        if all(done.get(k) == v for k, v in meta.items()):
            return done
    chunks = out / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    key = chunks / "settings.json"
    if key.is_file() and json.loads(key.read_text()) != {**meta, "chunk": chunk}:
        for old in chunks.glob("chunk_*.npz"):  # another dataset or other settings: start over
            old.unlink()
    atomic_write_json(key, {**meta, "chunk": chunk})
    embedder = DlibEmbedder(mode, jitter)
    known, reused = known_descriptors(reuse, meta), 0
    starts = list(range(0, n, chunk))
    t0, worked = time.perf_counter(), 0
    with make_progress(silent=silent, extra="{task.fields[rate]}") as progress:
        task = progress.add_task(f"dlib {mode}", total=n, rate="")
        for s in starts:
            path = chunks / f"chunk_{s:08d}.npz"
            stop = min(n, s + chunk)
            if path.is_file():
                progress.advance(task, stop - s)
                continue
            emb = np.zeros((stop - s, 128), dtype=np.float32)
            chips, ok, found, failed = [], [], [], []
            for i in range(s, stop):
                raw = index.read_bytes(i)
                stored = known.get(hashlib.sha1(raw).hexdigest())
                if stored is not None:
                    emb[i - s] = stored
                    found.append(True)
                    reused += 1
                    progress.advance(task, 1)
                    continue
                try:
                    c, f = embedder.chip(decode_rgb(raw))
                except Exception:  # noqa: BLE001 - an unreadable image is listed, not fatal
                    failed.append(i)
                    found.append(False)
                else:
                    chips.append(c)
                    ok.append(i - s)
                    found.append(f)
                if len(chips) == 32:  # descriptors in small batches, to keep the bar moving
                    emb[ok] = embedder.descriptors(chips)
                    progress.advance(task, len(chips))
                    chips, ok = [], []
            if chips:
                emb[ok] = embedder.descriptors(chips)
                progress.advance(task, len(chips))
            progress.advance(task, len(failed))
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, emb=emb, found=np.asarray(found, dtype=bool), failed=np.asarray(failed, dtype=np.int64))
            os.replace(tmp, path)
            worked += stop - s
            progress.update(task, rate=f"{worked / (time.perf_counter() - t0):.1f} img/s")
    seconds = time.perf_counter() - t0
    emb = np.zeros((n, 128), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    failed: list[int] = []
    for s in starts:
        z = np.load(chunks / f"chunk_{s:08d}.npz")
        emb[s : s + len(z["emb"])] = z["emb"]
        found[s : s + len(z["found"])] = z["found"]
        failed += [int(i) for i in z["failed"]]
    no_face = [int(i) for i in np.flatnonzero(~found) if int(i) not in set(failed)]
    tmp = out / "embeddings.tmp.npy"
    np.save(tmp, emb)
    os.replace(tmp, out / "embeddings.npy")
    meta.update({"no_face": no_face if mode == "detect" else [], "failed": failed, "seconds": round(seconds, 1), "images_embedded_now": worked - reused, "images_reused": reused,
                 "images_per_s": round((worked - reused) / seconds, 2) if worked > reused else None, "threads": 1})
    atomic_write_json(final, meta)  # written last: marks the embeddings complete
    return meta


def write_centred(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A copy of the embeddings ``src`` minus their mean over the dataset, back to unit length, in ``dst`` (same format).

    dlib's descriptors all lie in a narrow cone (two people's means are only 14-23 degrees
    apart on LFW); purify's angles (merge below 35, drop above 75 degrees) were set for
    margin-trained embeddings that spread over the sphere. Centring uses no label.
    """
    from cleanface._atomic import atomic_write_json

    src, dst = Path(src), Path(dst)
    meta = json.loads((src / "embeddings.json").read_text())
    emb = np.load(src / "embeddings.npy").astype(np.float32)
    mean = emb.mean(axis=0, dtype=np.float64).astype(np.float32)
    c = emb - mean
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "embeddings.tmp.npy"
    np.save(tmp, c.astype(np.float32))
    os.replace(tmp, dst / "embeddings.npy")
    atomic_write_json(dst / "embeddings.json", {**meta, "centred": True, "mean_norm": round(float(np.linalg.norm(mean)), 4)})
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="a dataset cleanface reads (image folder, CSV manifest, RecordIO)")
    p.add_argument("out", help="output folder: embeddings.npy + embeddings.json")
    p.add_argument("--mode", choices=MODES, default="detect", help="detect: HOG + 5 landmarks + get_face_chip(150, 0.25); chip: the image is an aligned chip already")
    p.add_argument("--jitter", type=int, default=0, help="dlib's num_jitters (0: one pass per image)")
    p.add_argument("--chunk", type=int, default=500, help="images per saved chunk (resume granularity)")
    p.add_argument("--centre", action="store_true", help="also write OUT/centred/: the embeddings minus their dataset mean, re-normalised (for purify's angles)")
    p.add_argument("--silent", action="store_true")
    args = p.parse_args()
    meta = embed_dataset(args.data, args.out, mode=args.mode, jitter=args.jitter, chunk=args.chunk, silent=args.silent)
    if args.centre:
        write_centred(args.out, Path(args.out) / "centred")
    print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in meta.items()}, indent=1))


if __name__ == "__main__":
    main()
