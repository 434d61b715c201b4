"""The ``cleanface overlap`` command: the table, the files and the report, and its one-line errors."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from cleanface_cli.main import cli
from cleanface_cli.overlap_cmds import COMMANDS
from tests.purify.test_overlap_runner import COMMON, PEOPLE, PER, sets_with_embeddings


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return sets_with_embeddings(tmp_path_factory.mktemp("overlap-cli"))


def _flat(text: str) -> str:
    """``text`` without white space and table rules: the rich table's cells wrap at the console's width."""
    return re.sub(r"[\s│┃┏┓┗┛┡┩━─┳┻╇└┘┴┬┼]", "", text)


def _run(*args: object):
    return CliRunner().invoke(cli, ["overlap", *map(str, args)])


def test_overlap_writes_the_files_and_the_report_and_prints_the_counts(sets, tmp_path):
    out = tmp_path / "out"
    result = _run(sets.a, sets.b, "--out", out, "--embeddings-a", sets.emb_a, "--embeddings-b", sets.emb_b, "--silent")
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert _flat(f"identities of A shared with B │ {COMMON} of {PEOPLE}") in text
    assert _flat(f"images of A found in B │ 1 of {PEOPLE * PER} (1 pair of images)") in text
    share = json.loads((out / "summary.json").read_text())["calibration"]["shared_rate"]
    assert _flat(f"calibration │ estimated {share:.1%} of A's identities in B") in text
    assert _flat(f"files │ {out}/identities.csv, {out}/images.csv") in text
    assert _flat(f"report │ {out / 'report' / 'index.html'}") in text
    assert (out / "identities.csv").is_file() and (out / "images.csv").is_file() and (out / "report" / "index.html").is_file()
    assert json.loads((out / "summary.json").read_text())["counts"]["shared_identities"] == COMMON


def test_cut_dup_cos_and_no_report(sets, tmp_path):
    out = tmp_path / "out"
    result = _run(sets.a, sets.b, "--out", out, "--embeddings-a", sets.emb_a, "--embeddings-b", sets.emb_b, "--cut", "0.7",
                  "--dup-cos", "0.99", "--no-report", "--silent")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["settings"] == {"cut": 0.7, "dup_cos": 0.99}
    assert not (out / "report").exists() and _flat(f"not rendered: run `cleanface report {out}`") in _flat(result.output)
    again = _run(sets.a, sets.b, "--out", out, "--embeddings-a", sets.emb_a, "--embeddings-b", sets.emb_b, "--silent")
    assert again.exit_code == 1 and "not empty; pass --overwrite" in again.output
    again = _run(sets.a, sets.b, "--out", out, "--embeddings-a", sets.emb_a, "--embeddings-b", sets.emb_b, "--overwrite", "--silent")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("extra, message", [
    ([], "overlap needs embeddings of both datasets"),
    (["--embeddings-a", "EA"], "pass --embeddings-b too"),
    (["--run", "RUN", "--embeddings-a", "EA", "--embeddings-b", "EB"], "not both"),
])
def test_missing_or_ambiguous_embeddings_are_one_line_errors(sets, tmp_path, extra, message):
    values = {"EA": sets.emb_a, "EB": sets.emb_b, "RUN": tmp_path}
    result = _run(sets.a, sets.b, "--out", tmp_path / "out", *[values.get(x, x) for x in extra])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_usage_errors(sets, tmp_path):
    result = _run(sets.a, sets.b, "--out", tmp_path / "out", "--embeddings-a", sets.emb_a, "--embeddings-b", sets.emb_b, "--cut", "1")
    assert result.exit_code == 2 and "--cut" in result.output


def test_every_option_has_help():
    for command in COMMANDS:
        assert command.help and command.help.strip()
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{command.name} {param.name}"
