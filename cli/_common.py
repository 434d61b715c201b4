"""Shared pieces of the click commands: error translation and common options."""

from __future__ import annotations

import errno
import functools
from typing import Any, Callable

import click
from rich.console import Console

from cleanface.errors import CleanfaceError

console = Console()
err_console = Console(stderr=True)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors, and a full disk, into one-line click errors (exit status 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CleanfaceError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; finished work is kept and a re-run resumes") from None
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            raise click.ClickException(
                f"no space left on device{where}; outputs are replaced only when complete, so the previous ones are intact: free space and re-run"
            ) from None

    return wrapper


def silent_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--silent``: no progress bars."""
    return click.option("--silent", is_flag=True, help="Do not show progress bars.")(func)


def seed_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(func)


def render_report_after(directory: Any, render: Callable[..., Any], **kwargs: Any) -> Any:
    """Render the report of finished work in ``directory``; a failure is one warning line, never a failed command.

    The work itself is complete when this runs (its ``COMPLETE`` marker is written), so a
    report that cannot be built (a missing template, a full disk) must not undo it:
    ``cleanface report DIRECTORY`` renders it again later. Returns the report's path, or
    None when it failed.
    """
    try:
        return render(directory, **kwargs)
    except Exception as exc:  # noqa: BLE001  (any failure of the report: a template error included)
        err_console.print(f"[yellow]warning:[/] {directory} is complete but its report could not be rendered ({exc}); "
                          f"run `cleanface report {directory}` to try again", soft_wrap=True)
        return None


def no_report_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-report``: skip the HTML report (``cleanface report`` renders it later)."""
    return click.option("--no-report", is_flag=True, help="Do not render the HTML report (cleanface report can do it later).")(func)
