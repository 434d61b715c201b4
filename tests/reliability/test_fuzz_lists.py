"""Arbitrary LFW people/pairs lists and TOML pipelines give a valid result or one clear error, nothing else.

(RecordIO and manifest readers are fuzzed in tests/data/test_fuzz_readers.py.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cleanface.pipeline.stages  # noqa: F401  (registers the stage kinds)
from cleanface.data.lfw import pair_paths, read_pairs, read_people
from cleanface.errors import ConfigError, DataError
from cleanface.pipeline.engine import plan_pipeline
from cleanface.pipeline.spec import apply_overrides, parse_pipeline, parse_value

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- LFW lists ------------------------------------------------------------------------------------------
_good_name = st.one_of(
    st.sampled_from(["Aaron_Eckhart", "Zico", "caf\udce9", "..a", "a.."]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/"), min_size=1, max_size=6),
)
_bad_name = st.sampled_from(["..", ".", "../../etc", "a/b", "/etc/passwd", "x\0y"])
_name = st.one_of(_good_name, _bad_name)
_good_number = st.integers(1, 12).map(str)
_bad_number = st.sampled_from(["0", "-2", "1e3", "x", "٣", "1_0", "9" * 30, "-0", "+4"])
_number = st.one_of(_good_number, _bad_number)
_field = st.one_of(_name, _number)
_line = st.lists(_field, min_size=0, max_size=5).map(lambda fields: "\t".join(fields))


def _pairs_text(folds: int, per: int, rows: list[list[str]]) -> str:
    return f"{folds}\t{per}\n" + "".join("\t".join(r) + "\n" for r in rows)


_matched = st.tuples(_name, _number, _number).map(list)
_mismatched = st.tuples(_name, _number, _name, _number).map(list)


@st.composite
def _well_formed_pairs(draw) -> str:
    """A pairs list with the right number and shape of lines, good names and numbers, at most one field spoiled."""
    folds, per = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    rows = []
    for _ in range(folds):
        rows += [[draw(_good_name), draw(_good_number), draw(_good_number)] for _ in range(per)]
        rows += [[draw(_good_name), draw(_good_number), draw(_good_name), draw(_good_number)] for _ in range(per)]
    if draw(st.booleans()):
        row = draw(st.sampled_from(rows))
        col = draw(st.integers(0, len(row) - 1))
        row[col] = draw(_bad_name if (len(row) == 3 and col == 0) or (len(row) == 4 and col in (0, 2)) else _bad_number)
    return _pairs_text(folds, per, rows)


_pairs_like = st.one_of(
    _well_formed_pairs(),
    st.builds(_pairs_text, st.integers(1, 2), st.integers(0, 2), st.lists(st.one_of(_matched, _mismatched), max_size=8)),
)
_people_rows = st.lists(st.one_of(st.tuples(_good_name, _good_number), st.tuples(_name, _number)), min_size=1, max_size=4)
_people_like = st.one_of(
    _people_rows.map(lambda rows: f"{len(rows)}\n" + "".join(f"{a}\t{b}\n" for a, b in rows)),  # one group
    st.lists(_people_rows, min_size=1, max_size=3).map(  # folds: a fold count, then each fold's count and rows
        lambda folds: f"{len(folds)}\n" + "".join(f"{len(rows)}\n" + "".join(f"{a}\t{b}\n" for a, b in rows) for rows in folds)
    ),
    st.builds(lambda n, rows: f"{n}\n" + "".join(f"{a}\t{b}\n" for a, b in rows), _number, st.lists(st.tuples(_name, _number), max_size=6)),
)
_list_text = st.one_of(_pairs_like, _people_like, st.lists(_line, max_size=8).map("\n".join))
_list_bytes = st.one_of(_list_text.map(lambda t: t.encode("utf-8", "surrogateescape")), st.binary(max_size=80))


def _one_line(exc: Exception) -> None:
    assert "\n" not in str(exc) and str(exc)


@SETTINGS
@given(data=st.one_of(_well_formed_pairs().map(lambda t: t.encode("utf-8", "surrogateescape")), _list_bytes))
def test_any_pairs_list(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.txt"
        path.write_bytes(data)
        try:
            pairs = read_pairs(path)
        except DataError as exc:
            _one_line(exc)
            event("DataError")
            return
        event("valid pairs")
        assert len(pairs.name1) == len(pairs.n1) == len(pairs.name2) == len(pairs.n2) == len(pairs.same) == len(pairs.fold)
        assert (pairs.n1 >= 1).all() and (pairs.n2 >= 1).all()
        root = Path(tmp) / "images"
        for side in pair_paths(pairs, root):
            for path_ in side:  # every image a pair names lies inside the images folder
                assert root.resolve() in Path(os.path.abspath(path_)).resolve(strict=False).parents


@SETTINGS
@given(data=st.one_of(_people_like.map(lambda t: t.encode("utf-8", "surrogateescape")), _list_bytes))
def test_any_people_list(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "people.txt"
        path.write_bytes(data)
        try:
            people = read_people(path)
        except DataError as exc:
            _one_line(exc)
            event("DataError")
            return
        event("valid people list")
        for name, count in people:
            assert isinstance(name, str) and name not in (".", "..") and "/" not in name and "\0" not in name
            assert isinstance(count, int) and count >= 0


# -- TOML pipelines ------------------------------------------------------------------------------------
_key = st.sampled_from(["name", "kind", "input", "run", "truth", "identities", "epochs", "size", "stages", "x"])
_scalar = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8),
    st.sampled_from(["data", "noise", "make-synthetic", "inject-noise", "train-subcenter", "purify", "report", "../up", "a b"]),
)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_key, inner, max_size=3)), max_leaves=6)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else ("-inf" if value == float("-inf") else repr(value)))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


_stage_names = st.sampled_from(["data", "noise", "train", "p.1", "x-y"])
_kinds = st.sampled_from(["make-synthetic", "inject-noise", "train-subcenter", "purify", "report", "evaluate", "nope"])


@st.composite
def _well_formed_pipeline(draw) -> str:
    """Stages with names and known kinds, references to other stages and random settings."""
    lines = ['name = "fuzz"\n']
    for _ in range(draw(st.integers(1, 4))):
        lines.append(f"[[stage]]\nname = {_toml(draw(_stage_names))}\nkind = {_toml(draw(_kinds))}\n")
        for key in draw(st.lists(st.sampled_from(["input", "run", "truth", "stages", "epochs", "identities"]), max_size=3, unique=True)):
            value = draw(st.one_of(_stage_names, st.lists(_stage_names, max_size=2), _scalar))
            lines.append(f"{key} = {_toml(value)}\n")
    return "".join(lines)


_stage = st.dictionaries(_key, _value, max_size=5).map(lambda d: "[[stage]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in d.items()))
_pipeline_text = st.one_of(
    _well_formed_pipeline(),
    st.builds(lambda head, stages: head + "\n".join(stages), st.sampled_from(["", 'name = "p"\n', "name = 3\n", "stage = 1\n"]), st.lists(_stage, max_size=4)),
    st.text(max_size=120),
    st.sampled_from(["a = " + "[" * 3000 + "]" * 3000, "[[stage]]\nname = {" * 200, 'name = "x"\n[[stage]]\n[[stage.x]]\n']),
)
_override = st.one_of(st.text(max_size=20), st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(["data", "x", ""]), _key,
                                                         st.one_of(st.text(max_size=10), st.just("[" * 3000))))


@SETTINGS
@given(text=_pipeline_text, overrides=st.lists(_override, max_size=2))
def test_any_pipeline_text(text, overrides):
    try:
        spec = apply_overrides(parse_pipeline(text, source="p.toml"), overrides)
        with tempfile.TemporaryDirectory() as tmp:
            plan = plan_pipeline(spec, tmp)
    except ConfigError as exc:
        _one_line(exc)
        event("ConfigError")
        return
    event("valid plan")
    assert [p.name for p in plan] == spec.names and len(set(spec.names)) == len(spec.names)
    assert all(p.action == "run" for p in plan)


def test_parse_value_never_raises_on_deep_nesting():
    assert parse_value("[" * 5000) == "[" * 5000
