"""One rich progress bar style for all long work."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(*, silent: bool = False, extra: str = "") -> Progress:
    """A progress bar: description, bar, done/total, elapsed, ETA and an optional extra field.

    ``extra`` is a format string over task fields, e.g. ``"loss {task.fields[loss]:.3f}"``.
    With ``silent`` the bar is disabled (nothing printed).
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if extra:
        columns.append(TextColumn(extra))
    return Progress(*columns, console=console, disable=silent, transient=False)
