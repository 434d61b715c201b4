"""Open any supported dataset, and write a dataset in any supported format.

Formats recognised by :func:`open_dataset`:

* a folder of identity sub-folders (``<identity>/<image>``);
* a ``.csv`` manifest, or a folder holding ``manifest.csv``;
* a RecordIO ``.rec`` (or its ``.idx``), or a folder holding ``train.rec``;
* a saved index ``.npz`` (:meth:`DatasetIndex.save`).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from cleanface.data._paths import check_not_source
from cleanface.data.folder import folder_layout, read_folder, write_folder
from cleanface.data.index import DatasetIndex
from cleanface.data.manifest import read_manifest, write_manifest
from cleanface.data.recordio import read_rec, write_rec
from cleanface.data.strings import StringArray
from cleanface.errors import ConfigError, DataError

FORMATS = ("folder", "manifest", "rec")
MANIFEST_NAME = "manifest.csv"
ACCEPTED = "a folder of <identity>/<image> sub-folders, a .csv manifest (or a folder holding manifest.csv), a .rec/.idx file (or a folder holding train.rec), or a saved index .npz"


def detect_format(path: str | os.PathLike) -> str:
    """``"folder"``, ``"manifest"``, ``"rec"`` or ``"index"`` for ``path``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    if path.is_dir():
        if (path / "train.rec").is_file():
            return "rec"
        if (path / MANIFEST_NAME).is_file():
            return "manifest"
        return "folder"
    suffix = path.suffix.lower()
    kinds = {".csv": "manifest", ".rec": "rec", ".idx": "rec", ".npz": "index"}
    if suffix in kinds:
        return kinds[suffix]
    raise DataError(f"cannot tell the format of {path}; expected {ACCEPTED}")


def _reader(fmt: str) -> Callable[..., DatasetIndex]:
    return {"folder": read_folder, "manifest": read_manifest, "rec": read_rec}.get(fmt, DatasetIndex.load)


def open_dataset(path: str | os.PathLike, **kw: Any) -> DatasetIndex:
    """Index the dataset at ``path``, whatever its format (see the module docstring).

    Keyword arguments go to the format's reader (``follow_symlinks`` for folders,
    ``check_files`` for manifests, ``silent`` for all but ``.npz``); one the reader
    does not take is an error, not silently dropped.
    """
    fmt = detect_format(path)
    reader = _reader(fmt)
    target = Path(path)
    if fmt == "manifest" and target.is_dir():
        target = target / MANIFEST_NAME
    params = inspect.signature(reader).parameters
    unknown = sorted(set(kw) - set(params))
    if fmt == "index":  # a saved index is loaded, not scanned: ``silent`` has nothing to silence
        unknown = [k for k in unknown if k != "silent"]
        kw = {k: v for k, v in kw.items() if k in params}
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to the {fmt} dataset {path}")
    return reader(target, **kw)


def write_dataset(
    index: DatasetIndex,
    out: str | os.PathLike,
    fmt: str,
    *,
    copy: bool = False,
    overwrite: bool = False,
    silent: bool = True,
) -> Path:
    """Write ``index`` to the directory ``out`` as ``fmt``; the identity of sample i is ``index.names[index.labels[i]]``.

    Parameters
    ----------
    fmt : {"folder", "manifest", "rec"}
        ``folder``: ``out/<identity>/<image>``. ``manifest``: ``out/manifest.csv`` with
        paths ``images/<identity>/<image>`` relative to it, the images written under
        ``out/images`` exactly as the folder format (so the result is self-contained
        and can be moved). ``rec``: ``out/train.rec``, ``out/train.idx``, ``out/identities.txt``.
    copy : bool
        Copy image files instead of hard-linking them (folder and manifest).
    overwrite : bool
        Replace a non-empty ``out``.

    Returns
    -------
    Path
        ``out`` (pass it to :func:`open_dataset` to read the result back).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if len(index) == 0:
        raise DataError(f"the dataset {index.root} has no samples to write")
    if fmt == "folder":
        return write_folder(index, out, copy=copy, overwrite=overwrite, silent=silent)
    if fmt == "rec":
        return write_rec(index, out, overwrite=overwrite, silent=silent)
    return _write_manifest_dataset(index, Path(out), copy=copy, overwrite=overwrite, silent=silent)


def _write_manifest_dataset(index: DatasetIndex, out: Path, *, copy: bool, overwrite: bool, silent: bool) -> Path:
    from cleanface._atomic import staging_dir

    check_not_source(index, out)
    with staging_dir(out, overwrite=overwrite) as stage:
        write_folder(index, stage / "images", copy=copy, overwrite=True, silent=silent)
        paths = StringArray.from_list(f"images/{p}" for p in folder_layout(index))
        write_manifest(index, stage / MANIFEST_NAME, paths=paths)
    return out
