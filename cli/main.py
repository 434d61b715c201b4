"""The ``cleanface`` command line: thin click commands over the library.

Each ``cli/*_cmds.py`` module lists its commands in ``COMMANDS``; they are added here.
"""

from __future__ import annotations

import importlib

import click

from cleanface import __version__

_MODULES = ("data_cmds", "synth_cmds", "train_cmds", "purify_cmds", "report_cmds", "run_cmds", "invert_cmds")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleanface")
def cli() -> None:
    """Clean label noise out of face-recognition training sets."""


for _name in _MODULES:
    try:
        _module = importlib.import_module(f"cleanface_cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not written yet
        if _exc.name != f"cleanface_cli.{_name}":
            raise
        continue
    for _command in getattr(_module, "COMMANDS", ()):
        cli.add_command(_command)


if __name__ == "__main__":
    cli()
