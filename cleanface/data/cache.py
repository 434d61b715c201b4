"""The decode-once cache: every image of a dataset decoded a single time into a uint8 memmap.

Decoding JPEGs costs more than a small network's forward pass on a CPU, so each
``(dataset, size, crop)`` is decoded once and then read from disk for every epoch and
every stage (training, embedding, purification).

Layout under the cache root (``$CLEANFACE_CACHE``, else ``~/.cache/cleanface``)::

    <key>/images.u8    uint8 (N, size, size, 3), C order, raw (np.memmap)
    <key>/status.u8    uint8 (N,): 1 decoded, 2 failed to decode
    <key>/bad.jsonl    one {"index", "location", "reason"} per failed sample
    <key>/meta.json    N, size, crop, index fingerprint, format version, counts (written last)

``key`` is a hash of the index fingerprint, a stamp of file sizes and times, ``size``,
``crop`` and :data:`FORMAT_VERSION`, so another dataset, another label set, files rewritten
in place or another crop get another cache. A cache is
built under ``.<key>.partial`` (with ``status.u8`` = 0 for samples not yet done, flushed
every :data:`FLUSH_EVERY` images) and renamed to ``<key>`` when complete; an interrupted
build resumes from where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanface._atomic import RunLock, atomic_write_json
from cleanface.data.index import BadFile, DatasetIndex
from cleanface.errors import DataError, LockError
from cleanface.progress import console, make_progress

#: Bump when the decoded pixels would change (decoder, filter, layout).
FORMAT_VERSION = 1
#: Images between flushes of a partial build (what an interruption can lose at most).
FLUSH_EVERY = 2048
WAIT_POLL_S = 0.5  # how often a process waiting for another one's cache looks again
_CHUNK = 64  # images per task sent to a decode worker
#: Files whose size and mtime enter the cache key (see :func:`content_stamp`).
STAMP_SAMPLES = 256

PENDING, DONE, FAILED = 0, 1, 2


def default_cache_root() -> Path:
    """``$CLEANFACE_CACHE`` when set, else ``~/.cache/cleanface``."""
    env = os.environ.get("CLEANFACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cleanface"


def content_stamp(index: DatasetIndex, samples: int = STAMP_SAMPLES) -> str:
    """Size and modification time of up to ``samples`` evenly spaced files (the ``.rec`` file for RecordIO).

    The index fingerprint covers paths and labels, not pixels; this stamp makes a dataset
    rewritten in place under the same names (e.g. synthetic faces drawn again with another
    seed) get a new cache, at the cost of a few ``stat`` calls.
    """
    h = hashlib.sha256()
    if index.kind == "rec":
        targets = [Path(index.root)]
    else:
        picks = np.unique(np.linspace(0, len(index) - 1, num=min(samples, len(index))).astype(np.int64))
        targets = [index.abspath(int(i)) for i in picks]
    for path in targets:
        try:
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"missing;")
    return h.hexdigest()[:16]


def cache_key(index: DatasetIndex, size: int, crop: int | None) -> str:
    """The cache folder name of ``index`` decoded at ``size`` from a centre crop ``crop``.

    A hash of the index fingerprint, :func:`content_stamp`, ``size``, ``crop`` and :data:`FORMAT_VERSION`.
    """
    text = f"{index.fingerprint()}|{content_stamp(index)}|size={int(size)}|crop={crop}|v{FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _check_args(index: DatasetIndex, size: int, crop: int | None) -> None:
    if len(index) == 0:
        raise DataError(f"the dataset {index.root} has no samples to cache")
    if int(size) < 1:
        raise DataError(f"cache image size must be at least 1, got {size}")
    if crop is not None and int(crop) < 1:
        raise DataError(f"cache crop must be at least 1 pixel, got {crop}")


# -- decoding, in this process or in workers ------------------------------------------
_WORKER_INDEX: DatasetIndex | None = None


def _worker_init(index: DatasetIndex) -> None:
    global _WORKER_INDEX
    _WORKER_INDEX = index


def _decode_many(index: DatasetIndex, ids: np.ndarray, size: int, crop: int | None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode samples ``ids``: (ids, pixels (len, size, size, 3), failures [(i, reason)])."""
    from cleanface.data.images import decode_image

    out = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    failed: list[tuple[int, str]] = []
    for k, i in enumerate(ids.tolist()):
        try:
            out[k] = decode_image(index.read_bytes(i), size=size, crop=crop, where=index.location(i))
        except DataError as exc:
            failed.append((i, str(exc)))
    return ids, out, failed


def _worker_decode(args: tuple[np.ndarray, int, int | None]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    assert _WORKER_INDEX is not None
    return _decode_many(_WORKER_INDEX, *args)


# -- the cache ------------------------------------------------------------------------
@dataclass
class DecodeCache:
    """Decoded pixels of every sample of one index at one ``size``/``crop``.

    Attributes
    ----------
    path : Path
        The cache folder ``<root>/<key>``.
    size : int
    crop : int or None
    fingerprint : str
        :meth:`DatasetIndex.fingerprint` of the cached index.
    valid : ndarray of shape (N,), bool
        False for samples that failed to decode (see ``bad_files``).
    bad_files : list of BadFile
    """

    path: Path
    size: int
    crop: int | None
    fingerprint: str
    valid: np.ndarray
    bad_files: list[BadFile]
    _images: np.ndarray | None = None

    # -- creation ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        index: DatasetIndex,
        cache_dir: str | os.PathLike | None = None,
        *,
        size: int,
        crop: int | None,
        workers: int = 0,
        silent: bool = False,
    ) -> "DecodeCache":
        """Decode every sample of ``index`` once (or open the cache when it is already complete).

        Parameters
        ----------
        index : DatasetIndex
        cache_dir : path-like, optional
            Cache root; default :func:`default_cache_root`.
        size, crop : int, int or None
            As for :func:`cleanface.data.images.decode_image`.
        workers : int
            Decode in this many worker processes (0: in this process).
        silent : bool
            No progress bar.

        Returns
        -------
        DecodeCache
            Samples that fail to decode are recorded (``valid``, ``bad_files``), not fatal.
        """
        _check_args(index, size, crop)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        key = cache_key(index, size, crop)
        final = root / key
        if (final / "meta.json").is_file():
            return cls._load(final, index, size, crop)
        partial = root / f".{key}.partial"
        lock = RunLock.beside(final)  # a fixed path beside the cache: it does not move with the rename
        waited = False
        while True:
            try:
                lock.acquire()
                break
            except LockError:
                # Another process is decoding the same cache: wait and use its result,
                # rather than failing or decoding twice.
                if (final / "meta.json").is_file():
                    return cls._load(final, index, size, crop)
                if not waited and not silent:
                    console.print(f"waiting for another process that is building the decode cache {final}")
                waited = True
                time.sleep(WAIT_POLL_S)
        try:
            if (final / "meta.json").is_file():  # another process finished meanwhile
                return cls._load(final, index, size, crop)
            partial.mkdir(parents=True, exist_ok=True)
            meta = cls._fill(index, partial, key, size=size, crop=crop, workers=workers, silent=silent)
            atomic_write_json(partial / "meta.json", meta)
            (partial / RunLock.NAME).unlink(missing_ok=True)  # left by an earlier version, which locked inside
            if final.exists():  # an incomplete leftover without meta.json
                shutil.rmtree(final)
            os.replace(partial, final)
        finally:
            lock.release()
        return cls._load(final, index, size, crop)

    @classmethod
    def open(cls, index: DatasetIndex, cache_dir: str | os.PathLike | None = None, *, size: int, crop: int | None) -> "DecodeCache":
        """Open the complete cache of ``index`` at ``size``/``crop``; :class:`DataError` when there is none."""
        _check_args(index, size, crop)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        final = root / cache_key(index, size, crop)
        if not (final / "meta.json").is_file():
            raise DataError(f"no complete decode cache for {index.root} (size {size}, crop {crop}) under {root}; build it with DecodeCache.build")
        return cls._load(final, index, size, crop)

    @classmethod
    def exists(cls, index: DatasetIndex, cache_dir: str | os.PathLike | None = None, *, size: int, crop: int | None) -> bool:
        """True when a complete cache of ``index`` at ``size``/``crop`` is on disk."""
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        return (root / cache_key(index, size, crop) / "meta.json").is_file()

    @staticmethod
    def _fill(index: DatasetIndex, folder: Path, key: str, *, size: int, crop: int | None, workers: int, silent: bool) -> dict:
        """Decode the samples of ``index`` not yet done into ``folder``; return the metadata."""
        n = len(index)
        build = {"n": n, "size": size, "crop": crop, "fingerprint": index.fingerprint(), "version": FORMAT_VERSION}
        build_file = folder / "build.json"
        if build_file.is_file():
            try:
                same = json.loads(build_file.read_text()) == build
            except (OSError, ValueError):
                same = False
            if not same:  # cannot happen for one key unless the files were tampered with: start over
                for name in ("images.u8", "status.u8", "bad.jsonl"):
                    (folder / name).unlink(missing_ok=True)
        atomic_write_json(build_file, build)
        shape = (n, size, size, 3)
        images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r+" if (folder / "images.u8").is_file() else "w+", shape=shape)
        status = np.memmap(folder / "status.u8", dtype=np.uint8, mode="r+" if (folder / "status.u8").is_file() else "w+", shape=(n,))
        bad_log = folder / "bad.jsonl"
        todo = np.flatnonzero(status == PENDING)
        with make_progress(silent=silent) as progress, open(bad_log, "a", encoding="utf-8") as log:
            task = progress.add_task(f"decoding {Path(index.root).name} once ({size}px)", total=n, completed=n - len(todo))
            since_flush = 0

            def store(ids: np.ndarray, pixels: np.ndarray, failed: list[tuple[int, str]]) -> None:
                nonlocal since_flush
                images[ids] = pixels
                status[ids] = DONE
                for i, reason in failed:
                    status[i] = FAILED
                    log.write(json.dumps({"index": i, "location": index.location(i), "reason": reason}) + "\n")
                since_flush += len(ids)
                if since_flush >= FLUSH_EVERY:
                    _flush(images, status, log)
                    since_flush = 0
                progress.advance(task, len(ids))

            chunks = [todo[k : k + _CHUNK] for k in range(0, len(todo), _CHUNK)]
            if workers > 0 and len(chunks) > 1:
                import multiprocessing as mp

                ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
                with ctx.Pool(workers, initializer=_worker_init, initargs=(index,)) as pool:
                    for result in pool.imap_unordered(_worker_decode, [(c, size, crop) for c in chunks]):
                        store(*result)
            else:
                for chunk in chunks:
                    store(*_decode_many(index, chunk, size, crop))
            _flush(images, status, log)
        failed_count = int((np.asarray(status) == FAILED).sum())
        images = status = None  # the memmaps are closed before the folder is renamed into place
        return {**build, "key": key, "valid": n - failed_count, "failed": failed_count}

    @classmethod
    def _load(cls, folder: Path, index: DatasetIndex, size: int, crop: int | None) -> "DecodeCache":
        try:
            meta = json.loads((folder / "meta.json").read_text())
            status = np.fromfile(folder / "status.u8", dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataError(f"decode cache {folder} is unreadable ({exc}); delete the folder to rebuild it") from None
        n = len(index)
        if meta.get("n") != n or meta.get("fingerprint") != index.fingerprint() or len(status) != n:
            raise DataError(f"decode cache {folder} does not match {index.root}; delete the folder to rebuild it")
        if (folder / "images.u8").stat().st_size != n * size * size * 3:
            raise DataError(f"decode cache {folder}/images.u8 has the wrong size; delete the folder to rebuild it")
        bad: list[BadFile] = []
        bad_log = folder / "bad.jsonl"
        if bad_log.is_file():
            seen = set()
            for line in bad_log.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row["index"] not in seen and status[row["index"]] == FAILED:
                        seen.add(row["index"])
                        bad.append(BadFile(row["location"], row["reason"]))
        return cls(folder, int(size), crop, meta["fingerprint"], status == DONE, bad)

    # -- reading ----------------------------------------------------------------------
    @property
    def images(self) -> np.ndarray:
        """Read-only memmap of shape (N, size, size, 3), uint8."""
        if self._images is None:
            self._images = np.memmap(self.path / "images.u8", dtype=np.uint8, mode="r", shape=(len(self.valid), self.size, self.size, 3))
        return self._images

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, i: int) -> np.ndarray:
        """Pixels of sample ``i``, shape (size, size, 3) uint8 (zeros for a sample that failed)."""
        return np.array(self.images[i])

    def batch(self, indices: np.ndarray) -> np.ndarray:
        """Pixels of samples ``indices`` (B,), shape (B, size, size, 3) uint8; reads in sorted order."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8)
        out[order] = self.images[indices[order]]
        return out

    def matches(self, index: DatasetIndex, *, size: int, crop: int | None) -> bool:
        """True when this cache holds ``index`` decoded at ``size``/``crop``."""
        return self.fingerprint == index.fingerprint() and len(self) == len(index) and self.size == size and self.crop == crop

    def __getstate__(self) -> dict:  # worker processes reopen the memmap instead of copying it
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __repr__(self) -> str:
        return f"DecodeCache({str(self.path)!r}, images={len(self)}, size={self.size}, crop={self.crop}, failed={int((~self.valid).sum())})"


def _flush(images: np.memmap, status: np.memmap, log) -> None:
    """Pixels and failure reasons first, then the status marks that vouch for them."""
    images.flush()
    log.flush()
    os.fsync(log.fileno())
    status.flush()
