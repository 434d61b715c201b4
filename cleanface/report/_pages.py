"""Writing a report folder: Jinja2 pages, shared assets, the size note, one atomic rename.

A report is the folder ``<dir>/report``: ``index.html`` at its top, every other page one
level down (``identities/<n>.html``, ``pages/*.html``), ``style.css`` and ``report.js``
beside ``index.html``. Pages link with relative paths only, so the folder opens from
``file://`` and can be moved with the files it links to. The folder is built under a
hidden staging name and renamed into place when complete (an interrupted build leaves
the previous report intact); the ``thumbs/`` and ``images/`` sub-folders of the
previous report are carried over, so thumbnails are written once.
"""

from __future__ import annotations

import math
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from cleanface._atomic import remove_path, staging_dir
from cleanface.errors import CleanfaceError

ASSETS = ("style.css", "report.js")
KEPT_FOLDERS = ("thumbs", "images")
_ENV: Environment | None = None


def templates_dir() -> Path:
    """The folder holding the Jinja2 templates and the CSS/JS assets."""
    return Path(str(resources.files("cleanface.report") / "templates"))


def environment() -> Environment:
    """The shared Jinja2 environment (autoescaped HTML, strict undefined names)."""
    global _ENV
    if _ENV is None:
        env = Environment(
            loader=FileSystemLoader(str(templates_dir())),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["num"] = format_number
        env.filters["pct"] = format_percent
        env.filters["deg"] = format_degrees
        env.filters["fixed"] = format_fixed
        _ENV = env
    return _ENV


def format_number(value: Any) -> str:
    """``1234567`` -> ``1,234,567``; None -> ``-``; floats with up to 4 significant decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def format_percent(value: Any, digits: int = 1) -> str:
    """``0.1234`` -> ``12.3%``; None or NaN -> ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * float(value):.{digits}f}%"


def format_degrees(value: Any, digits: int = 1) -> str:
    """``41.23`` -> ``41.2°``; None or NaN -> ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}\u00b0"


def format_fixed(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals; None or NaN -> ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def format_size(size: int) -> str:
    """Bytes as ``12.3 MB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def folder_size(path: Path) -> tuple[int, int]:
    """Total bytes and number of regular files under ``path``."""
    total = files = 0
    stack = [str(path)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
    return total, files


def svg(text: str) -> Markup:
    """Mark an SVG string from :mod:`cleanface.report.svg` as safe HTML."""
    return Markup(text)


class ReportWriter:
    """Writes the pages of one report into its staging folder.

    Use :func:`build_report`; ``page`` renders a template to a path relative to the
    report folder and passes ``root`` (the relative way back to the report folder:
    ``""`` or ``"../"``) to the template.
    """

    def __init__(self, stage: Path, final: Path) -> None:
        self.stage = stage
        self.final = final
        self.pages: list[str] = []

    def page(self, relpath: str, template: str, **context: Any) -> str:
        depth = relpath.count("/")
        if depth > 1:
            raise CleanfaceError(f"report page {relpath} is more than one folder deep")
        root = "../" * depth
        html = _displayable(environment().get_template(template).render(root=root, **context))
        target = self.stage / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html, encoding="utf-8")
        self.pages.append(relpath)
        return relpath

    def finish(self, template: str, **context: Any) -> None:
        """Copy the assets and write ``index.html`` last, stating the report's total size."""
        for name in ASSETS:
            shutil.copyfile(templates_dir() / name, self.stage / name)
        size, files = folder_size(self.stage)
        note = ""
        for _ in range(3):  # the note is part of the size it states: settle its length
            html = _displayable(environment().get_template(template).render(root="", size_note=note, **context))
            total = size + len(html.encode("utf-8"))
            new_note = f"{format_size(total)} in {files + 1:,} files"
            if new_note == note:
                break
            note = new_note
        (self.stage / "index.html").write_text(html, encoding="utf-8")
        self.pages.append("index.html")


class build_report:
    """Context manager: ``with build_report(out) as writer: ...`` builds ``out`` atomically.

    ``out`` is the report folder (e.g. ``RUN/report``). Leftover pages of an
    interrupted build are removed; thumbnails of the previous report are reused.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self._ctx: Any = None

    def __enter__(self) -> ReportWriter:
        if self.out.exists() and not self.out.is_dir():
            raise CleanfaceError(f"report path {self.out} exists and is not a folder")
        self._ctx = staging_dir(self.out, overwrite=True)
        stage: Path = self._ctx.__enter__()
        for entry in list(stage.iterdir()):
            if entry.name not in KEPT_FOLDERS:
                remove_path(entry)
        for name in KEPT_FOLDERS:
            old = self.out / name
            if old.is_dir() and not (stage / name).exists():
                os.replace(old, stage / name)
        return ReportWriter(stage, self.out)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._ctx.__exit__(None, None, None)
        # on error the staging folder is left for the next attempt (its thumbnails are reused)


def pages_of(items: Sequence[Any], per_page: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """(page number from 1, slice) over ``items``; one empty page when there are none."""
    per_page = max(1, int(per_page))
    count = max(1, math.ceil(len(items) / per_page))
    for p in range(count):
        yield p + 1, items[p * per_page:(p + 1) * per_page]


def pager(name: str, page: int, count: int, *, window: int = 3) -> list[dict[str, Any]]:
    """Links for a page bar: first, previous, a window of numbers, next, last.

    ``name`` is a format string over the page number, e.g. ``"pages/relabel-{}.html"``.
    """
    if count <= 1:
        return []
    links: list[dict[str, Any]] = []

    def add(label: str, target: int | None, current: bool = False) -> None:
        links.append({"label": label, "href": None if target is None else name.format(target), "current": current})

    add("\u00ab first", 1 if page > 1 else None)
    add("\u2039 prev", page - 1 if page > 1 else None)
    lo, hi = max(1, page - window), min(count, page + window)
    for p in range(lo, hi + 1):
        add(str(p), p, current=p == page)
    add("next \u203a", page + 1 if page < count else None)
    add("last \u00bb", count if page < count else None)
    return links


def _displayable(html: str) -> str:
    """``html`` with the bytes of names that are not UTF-8 (held as surrogate escapes) shown as U+FFFD."""
    return html.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
