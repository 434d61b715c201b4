"""Pipeline files: an ordered list of stages, each with a kind and its settings.

A pipeline is a TOML file::

    name = "demo"

    [[stage]]
    name = "data"              # unique; the stage's directory in the workdir
    kind = "make-synthetic"    # what runs (see cleanface.pipeline.stages)
    identities = 100           # every other key is a setting of that kind

    [[stage]]
    name = "noise"
    kind = "inject-noise"
    input = "data"             # the stage whose dataset this one reads
    close_set = 0.1

Settings can be overridden from the command line with ``stage.key=value`` where
value is read as a TOML value when it parses as one, else as a plain string.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanface.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class StageSpec:
    """One stage: its unique ``name``, its ``kind`` and the kind's ``settings``."""

    name: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineSpec:
    """An ordered list of stages read from a pipeline file."""

    name: str
    stages: list[StageSpec]
    source: str = ""

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise ConfigError(f"no stage named {name!r} in pipeline {self.name!r}; stages are: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]


def parse_pipeline(text: str, *, source: str = "<string>") -> PipelineSpec:
    """Parse pipeline TOML text; errors name the file and the offending stage."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: arrays or tables nested too deeply to read") from None
    raw_stages = doc.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"{source}: no [[stage]] tables; a pipeline needs at least one stage")
    stages: list[StageSpec] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_stages, start=1):
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: stage {position} is not a table")
        raw = dict(raw)
        name, kind = raw.pop("name", None), raw.pop("kind", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{source}: stage {position} needs a name of letters, digits, '-', '_' or '.', got {name!r}")
        if name in seen:
            raise ConfigError(f"{source}: stage name {name!r} is used twice")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{source}: stage {name!r} needs a kind")
        seen.add(name)
        stages.append(StageSpec(name, kind, raw))
    title = doc.get("name", Path(source).stem)
    if not isinstance(title, str):
        raise ConfigError(f"{source}: name must be a string, got {title!r}")
    return PipelineSpec(title, stages, source)


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read a pipeline file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc}") from None
    return parse_pipeline(text, source=str(path))


def parse_value(text: str) -> Any:
    """A command-line value: a TOML value when it parses as one, else the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def apply_overrides(spec: PipelineSpec, overrides: list[str]) -> PipelineSpec:
    """A copy of ``spec`` with ``stage.key=value`` overrides applied."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        target, sep, value = item.partition("=")
        stage_name, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r} must look like stage.key=value")
        if key in ("name", "kind"):
            raise ConfigError(f"override {item!r}: a stage's {key} cannot be overridden")
        spec.stage(stage_name).settings[key] = parse_value(value)
    return spec
