"""Image folders: ``root/<identity>/<image>``, read and written.

Reading checks every file cheaply (size and image header, no decoding) and lists
whatever it skips in ``bad_files`` with the reason; it never stops on one bad file.
Writing links (hard link, else symlink, else copy) or copies each image to
``out/<identity>/<file name>`` with identity and file names made safe for the filesystem.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from cleanface.data._paths import IMAGE_EXTENSIONS, check_not_source, has_image_extension, inside, safe_name, unique_name
from cleanface.data.images import check_image_file, not_an_image
from cleanface.data.index import BadFile, DatasetIndex
from cleanface.data.strings import StringArray
from cleanface.errors import DataError
from cleanface.progress import make_progress

__all__ = ["IMAGE_EXTENSIONS", "LINKS_MARKER", "folder_layout", "read_folder", "safe_name", "write_folder"]

#: Marks a folder whose symlinks pointing outside it were written by cleanface (see :func:`write_folder`).
LINKS_MARKER = ".cleanface-links"


# -- reading --------------------------------------------------------------------------
def _resolve_link(path: str, root_real: str, follow_symlinks: bool) -> str | None:
    """Why the symlink ``path`` is not followed, or None when it may be."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return "broken symlink"
    if not follow_symlinks and not inside(target, root_real):
        return f"symlink points outside the dataset root (to {target}); pass follow_symlinks=True to follow it"
    return None


def _scan_identity(folder: str, ident: str, root_real: str, follow_symlinks: bool, bad: list[BadFile]) -> list[str]:
    """Good file names of one identity folder (sorted); bad ones go to ``bad``."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        bad.append(BadFile(folder, f"cannot list folder: {exc.strerror or exc}"))
        return []
    good = []
    for entry in entries:
        path = entry.path
        is_dir = _entry_is_dir(entry, root_real, follow_symlinks, bad)
        if is_dir is None:
            continue
        if is_dir:
            bad.append(BadFile(path, "nested folder inside an identity folder (not indexed)"))
            continue
        if not has_image_extension(entry.name):
            bad.append(BadFile(path, f"unsupported extension (expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})"))
            continue
        why = check_image_file(path)
        if why is not None:
            bad.append(BadFile(path, why))
            continue
        good.append(entry.name)
    if not entries:
        bad.append(BadFile(folder, "empty identity folder"))
    elif not good:
        bad.append(BadFile(folder, "identity folder holds no usable image"))
    return good


def _entry_is_dir(entry: os.DirEntry, root_real: str, follow_symlinks: bool, bad: list[BadFile]) -> bool | None:
    """Whether ``entry`` is a folder; None (and a record in ``bad``) for a refused symlink."""
    if entry.is_symlink():
        why = _resolve_link(entry.path, root_real, follow_symlinks)
        if why is not None:
            bad.append(BadFile(entry.path, why))
            return None
    try:
        return entry.is_dir()
    except OSError:
        return False


def _list_identities(root_s: str, root_real: str, follow_symlinks: bool, bad: list[BadFile]) -> list[str]:
    """The identity folders of ``root_s`` (sorted); refused symlinks and stray images go to ``bad``."""
    try:
        with os.scandir(root_s) as it:
            top = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {root_s}: {exc.strerror or exc}") from None
    identities = []
    for entry in top:
        is_dir = _entry_is_dir(entry, root_real, follow_symlinks, bad)
        if is_dir is None:
            continue
        if is_dir:
            identities.append(entry.name)
        elif has_image_extension(entry.name):
            bad.append(BadFile(entry.path, "image outside any identity folder (not indexed)"))
    return identities


def read_folder(root: str | os.PathLike, *, follow_symlinks: bool = False, silent: bool = True) -> DatasetIndex:
    """Index ``root/<identity>/<image>``.

    Parameters
    ----------
    root : path-like
        One sub-folder per identity; images with extensions jpg, jpeg, png, bmp, webp,
        pgm, ppm (any case). Hidden entries (names starting with ``.``) and top-level
        files that are not images (README, ...) are ignored.
    follow_symlinks : bool
        Follow symlinks that point outside ``root``. Symlinks inside ``root`` are always
        followed; loops and broken links never are. A folder written by
        :func:`write_folder` with symlinks carries a marker that turns this on.
    silent : bool
        No progress bar.

    Returns
    -------
    DatasetIndex
        ``kind="folder"``; identities and files in sorted order; ``paths`` are
        ``<identity>/<file>``. Zero-byte, unreadable or unidentifiable files, empty
        identity folders, stray files and refused symlinks are in ``bad_files``.

    Raises
    ------
    DataError
        ``root`` is not a folder, or holds no usable image.
    """
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise DataError(f"dataset folder {root_s} does not exist or is not a folder")
    root_real = os.path.realpath(root_s)
    follow_symlinks = follow_symlinks or os.path.isfile(os.path.join(root_s, LINKS_MARKER))
    bad: list[BadFile] = []
    identities = _list_identities(root_s, root_real, follow_symlinks, bad)
    paths: list[str] = []
    idents: list[str] = []
    with make_progress(silent=silent) as progress:
        task = progress.add_task(f"indexing {Path(root_s).name}", total=len(identities))
        for ident in identities:
            for name in _scan_identity(os.path.join(root_s, ident), ident, root_real, follow_symlinks, bad):
                paths.append(f"{ident}/{name}")
                idents.append(ident)
            progress.advance(task)
    if not paths:
        detail = f"; {len(bad)} entries skipped, first: {bad[0].location}: {bad[0].reason}" if bad else ""
        raise DataError(f"no usable images found in {root_s} (expected <identity>/<image> sub-folders){detail}")
    names = sorted(set(idents))
    return DatasetIndex.from_lists(root_s, "folder", paths, idents, names=names, bad_files=bad)


# -- writing --------------------------------------------------------------------------
def folder_layout(index: DatasetIndex) -> StringArray:
    """Where :func:`write_folder` puts each sample: ``<identity>/<file name>`` relative to the output, shape (N,).

    Identity folders are :func:`safe_name` of the names (made distinct with ``~2``,
    ``~3``... in label order when two names sanitise alike); file names are the safe
    base names of the sample paths, made distinct within an identity in index order.
    """
    folders: list[str] = []
    taken: set[str] = set()
    for name in index.names:
        folder = unique_name(safe_name(name), taken)
        taken.add(folder)
        folders.append(folder)
    used: dict[int, set[str]] = {}
    out = []
    for label, path in zip(index.labels.tolist(), index.paths):
        names = used.setdefault(label, set())
        base = unique_name(safe_name(path.rsplit("/", 1)[-1]), names)
        names.add(base)
        out.append(f"{folders[label]}/{base}")
    return StringArray.from_list(out)


def _place(src: Path, dst: Path, copy: bool) -> str:
    """Place ``src`` at ``dst``; return how: ``"hardlink"``, ``"symlink"`` or ``"copy"``."""
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if not copy:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
        try:
            os.symlink(os.path.realpath(src), dst)
            return "symlink"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


def place_image(src: Path, dst: Path, copy: bool, out: str | os.PathLike) -> str:
    """:func:`_place` after checking that ``src`` is an image file."""
    try:
        why = not_an_image(src)
        if why is None:
            return _place(src, dst, copy)
    except OSError as exc:
        raise DataError(f"cannot write {src} to {dst}: {exc.strerror or exc}") from None
    raise DataError(f"{src} is not an image ({why}); it is not written into {out}")


def write_folder(
    index: DatasetIndex,
    out: str | os.PathLike,
    *,
    copy: bool = False,
    overwrite: bool = False,
    silent: bool = True,
) -> Path:
    """Write ``index`` as ``out/<identity>/<file name>`` (layout: :func:`folder_layout`).

    Each image is hard-linked, else symlinked, else copied; ``copy=True`` always copies.
    RecordIO samples are written out as files. Every name created lies inside ``out``
    (see :func:`folder_layout`), and a sample file that is not an image (by its first bytes,
    else its header) is refused with a :class:`DataError`: a manifest listing
    ``/etc/passwd`` cannot get it copied into a dataset. When symlinks were made, a marker file
    (``.cleanface-links``) tells :func:`read_folder` that the links pointing outside
    ``out`` were written by cleanface and may be followed. The folder is built
    under a staging name and moved into place when complete.

    Returns
    -------
    Path
        ``out``.
    """
    from cleanface._atomic import staging_dir

    check_not_source(index, out)
    layout = folder_layout(index)
    with staging_dir(out, overwrite=overwrite) as stage, make_progress(silent=silent) as progress:
        task = progress.add_task(f"writing {Path(out).name}", total=len(index))
        made: set[str] = set()
        symlinked = False
        for i, rel in enumerate(layout):
            folder = rel.rsplit("/", 1)[0]
            if folder not in made:
                (stage / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            dst = stage / rel
            if index.kind == "rec":
                if dst.exists() or dst.is_symlink():
                    dst.unlink()
                dst.write_bytes(index.read_bytes(i))
            else:
                symlinked |= place_image(index.abspath(i), dst, copy, out) == "symlink"
            progress.advance(task)
        if symlinked:
            (stage / LINKS_MARKER).write_text("symlinks in this folder were written by cleanface\n")
    return Path(out)

