"""The ``cleanface`` command line: thin click commands over the library.

Each ``cli/*_cmds.py`` module lists its commands in ``COMMANDS``; they are added here.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from cleanface import __version__

_MODULES = ("data_cmds", "synth_cmds", "train_cmds", "embed_cmds", "purify_cmds", "overlap_cmds", "review_cmds", "apply_cmds", "report_cmds", "run_cmds", "invert_cmds")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleanface")
def cli() -> None:
    """Clean label noise out of face-recognition training sets."""


for _name in _MODULES:
    for _command in importlib.import_module(f"cleanface_cli.{_name}").COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """The ``cleanface`` entry point.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) a process whose command succeeded waits for
    the others, leaves the process group and exits at once: left to the interpreter's
    teardown, the communication threads could still hold tensors and callbacks when
    Python is gone, and a finished process would end with SIGABRT.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        cli()
        return
    try:
        cli()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if code not in (0, None):
        sys.exit(code)
    from cleanface.training.distributed import leave_and_exit

    leave_and_exit()


if __name__ == "__main__":
    main()
