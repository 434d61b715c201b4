"""The ``cleanface report`` command."""

from __future__ import annotations

from click.testing import CliRunner

from cleanface_cli.main import cli
from cleanface_cli.report_cmds import COMMANDS


def test_report_command_regenerates_each_kind(purify_dir, run_dir):
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(purify_dir), "--placeholders", "--silent"])
    assert result.exit_code == 0, result.output
    assert "purify report" in result.output
    assert (purify_dir / "report" / "index.html").is_file() and not (purify_dir / "report" / "thumbs").exists()
    result = runner.invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "index.html").is_file()


def test_report_command_errors_are_one_line(tmp_path, run_dir):
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "holds no report inputs" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["report", str(run_dir), "--placeholders"])
    assert result.exit_code == 2 and "purify output directories only" in result.output


def test_every_command_has_help():
    for command in COMMANDS:
        assert command.help and command.help.strip()
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{command.name} {param.name}"
