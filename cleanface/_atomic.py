"""Atomic writes, staging directories and run locks.

Nothing cleanface writes ever looks complete when it is not:

* single files go to a temporary sibling and are renamed over the target with
  :func:`os.replace` once flushed and fsynced (:func:`atomic_write`);
* output directories are built under a hidden staging name and renamed into place
  when complete (:func:`staging_dir`), with a ``COMPLETE`` marker written last;
* an output directory is guarded by a lock file holding the owner's pid
  (:class:`RunLock`, ``flock`` underneath); a lock left by a dead process is taken over;
* what a killed writer leaves (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) is removed
  by the next writer of the same target.
"""

from __future__ import annotations

import contextlib
import hashlib
import errno
import fcntl
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
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
    _remove_dead_siblings(path.parent, f".{path.name}{_TMP}")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link (not what it points to) or a whole tree; nothing when ``path`` is absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


_TMP = ".tmp-"
_OLD = ".old-"


def _remove_dead_siblings(folder: Path, prefix: str) -> None:
    """Remove entries of ``folder`` named ``<prefix><pid>`` whose process is gone.

    A process killed in the middle of :func:`atomic_write` leaves its temporary file
    (``.<name>.tmp-<pid>``); one killed between the two renames of :func:`staging_dir`
    leaves the previous output under ``.<name>.old-<pid>``. The next writer of the same
    target clears what dead processes left; files of live processes are not touched.
    """
    try:
        with os.scandir(folder) as entries:
            found = [e for e in entries if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in found:
        pid = entry.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            _unlink_quietly(Path(entry.path))


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


def staging_path(out: str | os.PathLike) -> Path:
    """Where :func:`staging_dir` builds ``out``: ``.<name>.partial`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a hidden staging name, then move it to ``out`` when complete.

    The staging directory (``.<name>.partial``) survives an interruption so that
    resumable work can pick up its pieces; it is renamed to ``out`` only after the
    body returns without error. An existing ``out`` is replaced only with ``overwrite``.
    """
    out = check_output_dir(out, overwrite=overwrite)
    stage = staging_path(out)
    stage.mkdir(parents=True, exist_ok=True)
    _remove_dead_siblings(out.parent, f".{out.name}{_OLD}")
    yield stage
    if out.exists():
        trash = out.with_name(f".{out.name}{_OLD}{os.getpid()}")
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


_HELD: set[str] = set()  # lock files this process holds (a nested RunLock of the same file is a no-op)


class RunLock:
    """An exclusive lock guarding an output directory, held by one process at a time.

    The lock file (``.cleanface.lock`` in the directory by default) holds
    ``{"pid": ..., "host": ...}`` of its holder, for the message that refuses a second
    process. Exclusivity itself comes from ``flock`` on that file: the operating system
    drops it when the holder ends in any way (SIGKILL included), so a lock file left by a
    dead process is simply taken over, and a holder on another machine sharing the
    filesystem is never mistaken for a dead one. On filesystems without ``flock`` the
    pid in the file decides instead (a holder on this host that is gone is taken over).
    """

    NAME = ".cleanface.lock"

    def __init__(self, directory: str | os.PathLike, *, name: str = NAME, what: str | os.PathLike | None = None) -> None:
        self.path = Path(directory) / name
        self.what = str(what if what is not None else directory)
        self.held = False
        self._fd: int | None = None

    @classmethod
    def beside(cls, out: str | os.PathLike) -> "RunLock":
        """A lock for the output ``out`` kept next to it (``.<name>.lock``), for outputs that appear by a rename."""
        out = Path(out)
        return cls(out.parent, name=f".{out.name}.lock", what=out)

    def acquire(self) -> "RunLock":
        key = os.path.abspath(self.path)
        if key in _HELD:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder_fd(fd)
                os.close(fd)
                raise LockError(self._refusal(holder, me)) from None
            except OSError:  # this filesystem has no flock
                os.close(fd)
                return self._acquire_by_pid(me)
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # the previous holder removed the file between our open and flock: try again
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            self._fd, self.held = fd, True
            _HELD.add(key)
            return self
        raise LockError(f"could not take the lock {self.path}")

    def _refusal(self, holder: dict, me: dict) -> str:
        pid = holder.get("pid", "?")
        where = f" on {holder['host']}" if holder.get("host") not in (None, me["host"]) else ""
        return f"{self.what} is in use by process {pid}{where}; wait for it to finish or choose another output directory"

    def _acquire_by_pid(self, me: dict) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                pid = int(holder.get("pid", -1))
                if pid > 0 and pid != me["pid"] and (holder.get("host") != me["host"] or _pid_alive(pid)):
                    raise LockError(self._refusal(holder, me)) from None
                _unlink_quietly(self.path)  # stale: the holder is dead
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            _HELD.add(os.path.abspath(self.path))
            return self
        raise LockError(f"could not take the lock {self.path}")

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            _unlink_quietly(self.path)  # still locked: a process that opened the old file sees it is gone
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.held = False
            _HELD.discard(os.path.abspath(self.path))

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder_fd(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
