"""Atomic writes, staging directories and run locks.

Nothing cleanface writes ever looks complete when it is not:

* single files go to a temporary sibling and are renamed over the target with
  :func:`os.replace` once flushed and fsynced (:func:`atomic_write`);
* output directories are built under a hidden staging name and renamed into place
  when complete (:func:`staging_dir`), with a ``COMPLETE`` marker written last;
* a run directory is guarded by a lock file holding the owner's pid
  (:class:`RunLock`); a lock left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
from pathlib import Path
from typing import IO, Any, Iterator

from cleanface.errors import CleanfaceError, LockError

COMPLETE_MARKER = "COMPLETE"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception (including ``ENOSPC``) the temporary file is removed and the
    previous content of ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno == errno.ENOSPC:
            raise CleanfaceError(f"no space left on device while writing {path}; the previous version is intact") from exc
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def is_complete(directory: str | os.PathLike) -> bool:
    """True when ``directory`` carries the ``COMPLETE`` marker written last by a finished stage."""
    return (Path(directory) / COMPLETE_MARKER).is_file()


def mark_complete(directory: str | os.PathLike, info: dict | None = None) -> None:
    """Write the ``COMPLETE`` marker (optionally with JSON ``info``) as the last file of a stage."""
    atomic_write_json(Path(directory) / COMPLETE_MARKER, info or {})


def check_output_dir(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse a non-empty ``out`` unless ``overwrite``; return it as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CleanfaceError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CleanfaceError(f"output directory {out} is not empty; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a hidden staging name, then move it to ``out`` when complete.

    The staging directory (``.<name>.partial``) survives an interruption so that
    resumable work can pick up its pieces; it is renamed to ``out`` only after the
    body returns without error. An existing ``out`` is replaced only with ``overwrite``.
    """
    out = check_output_dir(out, overwrite=overwrite)
    stage = out.with_name(f".{out.name}.partial")
    stage.mkdir(parents=True, exist_ok=True)
    yield stage
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(stage, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file (``.cleanface.lock``) guarding a run directory.

    The file holds ``{"pid": ..., "host": ...}``. A second process is refused with a
    message naming the holder; a lock whose process is gone is taken over.
    """

    NAME = ".cleanface.lock"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / self.NAME
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                same_host = holder.get("host") == me["host"]
                pid = int(holder.get("pid", -1))
                if pid == me["pid"]:
                    self.held = True
                    return self
                if same_host and pid > 0 and _pid_alive(pid):
                    raise LockError(
                        f"{self.path.parent} is in use by process {pid}; wait for it to finish or choose another output directory"
                    )
                _unlink_quietly(self.path)  # stale: the holder is dead
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise LockError(f"could not take the lock {self.path}")

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            _unlink_quietly(self.path)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
