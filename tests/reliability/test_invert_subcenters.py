"""``cleanface purify RUN DATA --invert-subcenters``: every sub-center's face, shown on the report's identity pages."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cleanface_cli.main import cli


def test_purify_inverts_every_subcenter_into_its_report(sub_run, tiny_faces, tmp_path):
    out = tmp_path / "clean"
    res = CliRunner().invoke(cli, ["purify", str(sub_run), str(tiny_faces), "--out", str(out), "--rounds", "1", "--invert-subcenters", "--silent"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "inversions" / "inversion.json").read_text())
    names = (sub_run / "identities.txt").read_text().split()
    k = manifest["k"]
    assert {(it["identity"], it["subcenter"]) for it in manifest["items"]} == {(n, j) for n in names for j in range(k)}
    assert manifest["settings"]["image_prior"]["images"] == 48  # every image of the 48 (fewer than the 1000 asked for)
    assert sum(it["dominant"] is True for it in manifest["items"]) == len(names)  # the purify votes marked one per identity
    pages = sorted((out / "report" / "identities").glob("*.html"))
    shown = sum(page.read_text().count('src="../inversions/') for page in pages)
    assert shown == len(manifest["items"])  # every synthesised face is on its identity's page
    assert all((out / "report" / "inversions" / it["file"]).is_file() for it in manifest["items"])
