"""``cleanface apply``: a real purify output plus overrides to the final dataset, row by row; bad overrides write nothing."""

from __future__ import annotations

import csv
from collections import Counter
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cleanface.data.open import open_dataset
from cleanface.errors import DataError
from cleanface.purify.apply import apply_overrides
from cleanface.purify.overrides import read_overrides
from cleanface.purify.runner import purify_from_embeddings
from cleanface.purify.settings import PurifySettings

D = 48
NAMES = [f"p{c:02d}" for c in range(12)]
PER = 8


def make_clean(root: Path, *, merge: bool = True, split: bool = False) -> Path:
    """A purify output of 12 identities x 8 images with hand-made embeddings.

    p01 is p00 under a second name (merged by the angle rule unless ``merge`` is off), p02 holds two
    people (images 4-7 are another one: a split proposal), p03/7 is nobody (dropped), p04/7 is p05
    (relabelled to p05).
    """
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(D, D)))[0]
    data = root / "noisy"
    vectors = []
    for c, name in enumerate(NAMES):
        (data / name).mkdir(parents=True)
        for j in range(PER):
            axis = axes[0] if c == 1 else axes[20] if (c == 2 and j >= 4) else axes[c]
            if (c, j) == (3, 7):
                axis = axes[30]
            if (c, j) == (4, 7):
                axis = axes[5]
            v = axis + 0.25 * rng.normal(size=D) / np.sqrt(D)
            vectors.append(v / np.linalg.norm(v))
            Image.new("RGB", (8, 8), (20 * c, 30 * j, 7)).save(data / name / f"{j}.png")
    np.save(root / "emb.npy", np.array(vectors, np.float32))
    (root / "emb.paths.txt").write_text("".join(f"{n}/{j}.png\n" for n in NAMES for j in range(PER)))
    settings = PurifySettings(merge_rule="angle", split_rule="angle", drop_rule="angle", threshold=40, merge=merge, split=split)
    return purify_from_embeddings(data, root / "emb.npy", root / "clean", k=2, settings=settings, silent=True)


def sample(name: str, j: int) -> int:
    return NAMES.index(name) * PER + j


def write_overrides(path: Path, *, images=(), merges=(), splits=(), **extra) -> Path:
    path.write_text(json.dumps({"format": "cleanface-overrides", "version": 1, "images": list(images), "merges": list(merges),
                                "splits": list(splits), **extra}))
    return path


def read_rows(path: Path) -> dict[int, dict[str, str]]:
    with open(path, newline="") as handle:
        return {int(r["index"]): r for r in csv.DictReader(handle)}


def final_identities(final: Path) -> dict[str, str]:
    """Image file name (identity/j.png of the input) -> identity folder of the final dataset, read back from the files."""
    index = open_dataset(final / "data", silent=True)
    return {index.paths[i]: index.names[int(index.labels[i])] for i in range(len(index))}


@pytest.fixture()
def clean(tmp_path: Path) -> Path:
    return make_clean(tmp_path)


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_fixture_holds_every_kind_of_decision(clean: Path) -> None:
    summary = json.loads((clean / "summary.json").read_text())
    rows = read_rows(clean / "decisions.csv")
    assert summary["merges"][0]["identities"] == ["p00", "p01"] and summary["merges"][0]["merged"]
    assert summary["splits"][0]["identity"] == "p02" and not summary["splits"][0]["applied"]
    assert rows[sample("p03", 7)]["action"] == "drop"
    assert (rows[sample("p04", 7)]["action"], rows[sample("p04", 7)]["new_identity"]) == ("relabel", "p05")
    groups = np.load(clean / "analysis.npz")["split_group"]
    assert set(np.flatnonzero(groups == 1)) == {sample("p02", j) for j in range(4)}  # the images nearest the second sub-center
    assert set(np.flatnonzero(groups == 0)) == {sample("p02", j) for j in range(4, 8)}


def test_apply_changes_exactly_the_reviewed_rows(clean: Path, tmp_path: Path) -> None:
    before = tree_hash(clean), tree_hash(tmp_path / "noisy")
    overrides = write_overrides(tmp_path / "overrides.json", reviewer="ana", images=[
        {"index": sample("p03", 7), "decision": "keep", "old": "drop", "who": "ana", "when": "2026-12-01T10:00:00Z"},
        {"index": sample("p06", 0), "decision": "drop", "old": "keep"},
        {"index": sample("p04", 7), "decision": "move", "identity": "p07", "old": "relabel"},
        {"index": sample("p08", 1), "decision": "accept", "old": "keep"},
        {"index": sample("p09", 2), "decision": "keep", "old": "keep"},  # keeping a kept image changes nothing
    ], merges=[{"identities": ["p01", "p00"], "decision": "reject"}], splits=[{"identity": "p02", "decision": "accept"}])
    final = apply_overrides(clean, overrides, tmp_path / "final", silent=True)
    assert (tree_hash(clean), tree_hash(tmp_path / "noisy")) == before  # inputs untouched

    purified, rows = read_rows(clean / "decisions.csv"), read_rows(final / "decisions.csv")
    assert list(rows) == list(purified)
    expected = {  # sample -> (action, new identity, review)
        sample("p03", 7): ("keep", "p03", "overridden"),
        sample("p06", 0): ("drop", "", "overridden"),
        sample("p04", 7): ("relabel", "p07", "overridden"),
        sample("p08", 1): ("keep", "p08", "accepted"),
        sample("p09", 2): ("keep", "p09", "accepted"),
        **{sample("p01", j): ("keep", "p01", "overridden") for j in range(PER)},  # the merge rejected
        **{sample("p02", j): ("new-identity", "p02#2", "overridden") for j in range(4)},  # the split accepted
    }
    for i, row in rows.items():
        old = purified[i]
        action, new, review = expected.get(i, (old["action"], old["new_identity"], ""))
        assert (row["action"], row["new_identity"], row["review"]) == (action, new, review), i
        assert row["reason"] == ("reviewed" if review == "overridden" else old["reason"])
        assert (row["purify_action"], row["purify_new_identity"], row["purify_reason"]) == (old["action"], old["new_identity"], old["reason"])
        assert {k: row[k] for k in old if k not in ("action", "new_identity", "reason")} == {k: v for k, v in old.items() if k not in ("action", "new_identity", "reason")}

    in_output = {i: r for i, r in rows.items() if r["action"] in ("keep", "relabel", "merge", "new-identity")}
    assert Counter(final_identities(final).values()) == Counter(r["new_identity"] for r in in_output.values())
    for image in (final / "data").rglob("*.png"):  # each image's colour says which input sample it is
        red, green, _ = Image.open(image).getpixel((0, 0))
        assert rows[sample(NAMES[red // 20], green // 30)]["new_identity"] == image.parent.name, image

    summary = json.loads((final / "summary.json").read_text())
    assert summary["images_after"] == len(in_output)
    assert summary["identities_after"] == len({r["new_identity"] for r in in_output.values()})
    assert summary["merges"][0]["merged"] is False and summary["merges"][0]["reviewed"] == "reject"
    assert summary["splits"][0]["applied"] is True and summary["splits"][0]["new_identity"] == "p02#2"
    assert summary["review"]["images"] == {"accepted": 2, "overridden": 3 + PER + 4, "in_file": 5}
    assert summary["review"]["merges"] == {"accepted": 0, "rejected": 1} and summary["review"]["reviewer"] == "ana"
    assert json.loads((final / "overrides.json").read_text())["reviewer"] == "ana"
    assert (final / "COMPLETE").is_file()


def test_accepting_a_proposed_merge_merges_and_a_kept_image_follows_it(tmp_path: Path) -> None:
    clean = make_clean(tmp_path, merge=False)
    summary = json.loads((clean / "summary.json").read_text())
    assert summary["merges"][0]["merged"] is False
    overrides = write_overrides(tmp_path / "o.json", merges=[{"identities": ["p00", "p01"], "decision": "accept"}],
                                images=[{"index": sample("p01", 3), "decision": "drop"}, {"index": sample("p04", 7), "decision": "move", "identity": "p01"}])
    final = apply_overrides(clean, overrides, tmp_path / "final", silent=True)
    rows = read_rows(final / "decisions.csv")
    assert {(rows[sample("p01", j)]["action"], rows[sample("p01", j)]["new_identity"]) for j in range(PER) if j != 3} == {("merge", "p00")}
    assert rows[sample("p01", 3)]["action"] == "drop"
    assert (rows[sample("p04", 7)]["action"], rows[sample("p04", 7)]["new_identity"]) == ("relabel", "p00")  # a move follows the merge
    assert "p01" not in set(final_identities(final).values())


def test_rejecting_an_applied_split_keeps_the_identity_whole(tmp_path: Path) -> None:
    clean = make_clean(tmp_path, split=True)
    rows = read_rows(clean / "decisions.csv")
    assert {rows[sample("p02", j)]["new_identity"] for j in range(4)} == {"p02#2"}
    overrides = write_overrides(tmp_path / "o.json", splits=[{"identity": "p02", "decision": "reject"}])
    final = apply_overrides(clean, overrides, tmp_path / "final", silent=True)
    rows = read_rows(final / "decisions.csv")
    assert {(rows[sample("p02", j)]["action"], rows[sample("p02", j)]["new_identity"]) for j in range(PER)} == {("keep", "p02")}
    assert "p02#2" not in set(final_identities(final).values())


BAD = {
    "unknown image": ({"images": [{"index": 9999, "decision": "drop"}]}, "unknown image 9999"),
    "unknown identity": ({"images": [{"index": 1, "decision": "move", "identity": "nobody"}]}, "unknown identity 'nobody'"),
    "moved twice": ({"images": [{"index": 5, "decision": "move", "identity": "p03"}, {"index": 5, "decision": "drop"}]},
                    "image 5 is overridden twice (images[0] and images[1])"),
    "other location": ({"images": [{"index": 2, "decision": "drop", "location": "/elsewhere/2.png"}]}, "not /elsewhere/2.png"),
    "other purify": ({"images": [{"index": 2, "decision": "drop", "old": "relabel"}]}, "is keep, not relabel"),
    "unknown merge": ({"merges": [{"identities": ["p05", "p06"], "decision": "accept"}]}, "no merge proposal of 'p05' and 'p06'"),
    "unknown split": ({"splits": [{"identity": "p07", "decision": "accept"}]}, "no split proposal of 'p07'"),
    "split not accepted": ({"images": [{"index": 1, "decision": "move", "identity": "p02#2"}]}, "exists only when the split of 'p02' is accepted"),
    "bad decision": ({"images": [{"index": 2, "decision": "maybe"}]}, "decision must be one of keep, drop, move, accept"),
    "move without identity": ({"images": [{"index": 2, "decision": "move"}]}, "a move needs the identity"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_override_is_one_line_and_writes_nothing(clean: Path, tmp_path: Path, case: str) -> None:
    content, message = BAD[case]
    path = tmp_path / "o.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as caught:
        apply_overrides(clean, path, tmp_path / "final", silent=True)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "final").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".final")]  # no staging or lock left behind


@pytest.mark.parametrize("text, message", [
    ("{\"images\": [", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ("{\"format\": \"other\", \"images\": []}", "is not a cleanface overrides file"),
    ("{\"reviewer\": \"x\"}", "holds none of images, merges, splits"),
])
def test_malformed_files_are_refused_on_reading(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "o.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_overrides(path)


def test_a_changed_dataset_is_refused(clean: Path, tmp_path: Path) -> None:
    (tmp_path / "noisy" / "p05" / "3.png").unlink()
    overrides = write_overrides(tmp_path / "o.json", images=[{"index": 1, "decision": "drop"}])
    with pytest.raises(DataError, match="the dataset changed since purify"):
        apply_overrides(clean, overrides, tmp_path / "final", silent=True)
    assert not (tmp_path / "final").exists()


def test_cli_apply(clean: Path, tmp_path: Path) -> None:
    from cleanface_cli.main import cli

    overrides = write_overrides(tmp_path / "o.json", images=[{"index": sample("p03", 7), "decision": "keep"}])
    result = CliRunner().invoke(cli, ["apply", str(clean), "--overrides", str(overrides), "--out", str(tmp_path / "final"), "--silent"])
    assert result.exit_code == 0, result.output
    assert "1 changed" in result.output and (tmp_path / "final" / "report" / "index.html").is_file()
    bad = write_overrides(tmp_path / "bad.json", images=[{"index": 9999, "decision": "drop"}])
    result = CliRunner().invoke(cli, ["apply", str(clean), "--overrides", str(bad), "--out", str(tmp_path / "final2"), "--silent"])
    assert result.exit_code != 0 and "unknown image 9999" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_malformed_json_through_apply_writes_nothing(clean: Path, tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    path.write_text('{"images": [{"index": 1, "decision": "drop"},]}')
    with pytest.raises(DataError, match=r"is not valid JSON: .* at line 1, column \d+"):
        apply_overrides(clean, path, tmp_path / "final", silent=True)
    assert not (tmp_path / "final").exists()
