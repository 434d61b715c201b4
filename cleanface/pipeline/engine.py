"""Run a pipeline: plan from fingerprints, skip what is up to date, resume the rest.

Each stage writes into ``WORKDIR/<stage name>/``. Its fingerprint hashes its kind,
its settings and the fingerprints of the stages it reads from, so a change to one
setting re-runs that stage and every stage downstream of it, and nothing else.

``stage.json`` in the stage directory records the fingerprint and, once the stage
finished, its outputs; the ``COMPLETE`` marker is written last. A stage whose
directory holds the same fingerprint but no marker was interrupted: it runs again
in the same directory, so training resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cleanface._atomic import RunLock, atomic_write_json, is_complete, mark_complete
from cleanface.errors import ConfigError, PipelinePaused
from cleanface.pipeline.spec import PipelineSpec, StageSpec

FINGERPRINT_VERSION = 1


@dataclass
class StageContext:
    """What a stage function sees: its spec, its directory and finished upstream outputs."""

    spec: StageSpec
    workdir: Path
    dir: Path
    outputs: dict[str, dict[str, Any]]
    silent: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        return self.spec.settings

    def upstream(self, setting: str, key: str, *, default_stage: str | None = None) -> Any:
        """The output ``key`` of the stage named by setting ``setting`` (or ``default_stage``)."""
        stage = self.settings.get(setting, default_stage)
        if stage is None:
            raise ConfigError(f"stage {self.spec.name!r} needs the setting {setting!r} naming the stage to read from")
        if stage not in self.outputs:
            raise ConfigError(f"stage {self.spec.name!r}: {setting} = {stage!r} names no earlier finished stage")
        value = self.outputs[stage].get(key)
        if value is None:
            raise ConfigError(f"stage {self.spec.name!r}: stage {stage!r} has no output {key!r}")
        return value


@dataclass(frozen=True)
class StageKind:
    """A kind of stage: the function that runs it and the settings that name other stages."""

    run: Callable[[StageContext], dict[str, Any]]
    refs: tuple[str, ...] = ("input",)
    help: str = ""
    files: tuple[str, ...] = ()  # settings naming input files whose contents are part of the fingerprint


STAGE_KINDS: dict[str, StageKind] = {}
FILE_DEFAULTS: dict[str, dict[str, str]] = {}  # kind -> {setting: default file name}


def stage_file(spec: StageSpec, setting: str, workdir: Path) -> Path:
    """The input file a stage's ``setting`` names (its default when absent), relative paths taken from ``workdir``."""
    name = str(spec.settings.get(setting, FILE_DEFAULTS.get(spec.kind, {}).get(setting, "")))
    if not name:
        raise ConfigError(f"stage {spec.name!r} needs the setting {setting!r} naming a file")
    path = Path(name).expanduser()
    return path if path.is_absolute() else workdir / path


def _file_stamp(path: Path) -> str:
    """sha256 of a file's contents, or "absent"."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "absent"


def register_stage(kind: str, *, refs: tuple[str, ...] = ("input",), help: str = "", files: dict[str, str] | None = None) -> Callable:
    """Decorator registering a stage function under ``kind``.

    ``files``: settings that name an input file, with the file name used when the setting
    is absent (relative paths are relative to the workdir); a stage re-runs when the
    file's contents change, appear or disappear (:func:`stage_file`).
    """

    def wrap(func: Callable[[StageContext], dict[str, Any]]) -> Callable[[StageContext], dict[str, Any]]:
        STAGE_KINDS[kind] = StageKind(func, refs, help or (func.__doc__ or "").strip().splitlines()[0], tuple(files or {}))
        FILE_DEFAULTS[kind] = dict(files or {})
        return func

    return wrap


def _kind(spec: StageSpec) -> StageKind:
    if spec.kind not in STAGE_KINDS:
        raise ConfigError(f"stage {spec.name!r}: unknown kind {spec.kind!r}; known kinds: {', '.join(sorted(STAGE_KINDS))}")
    return STAGE_KINDS[spec.kind]


def _references(spec: StageSpec) -> list[str]:
    names: list[str] = []
    for key in _kind(spec).refs:
        value = spec.settings.get(key)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            names.extend(v for v in value if isinstance(v, str))
    return names


def fingerprints(spec: PipelineSpec, workdir: str | Path | None = None) -> dict[str, str]:
    """Fingerprint of every stage, from its kind, settings, referenced stages and (with ``workdir``) the files it reads."""
    result: dict[str, str] = {}
    for stage in spec.stages:
        refs = _references(stage)
        if "stages" in _kind(stage).refs and "stages" not in stage.settings:
            refs = list(result)  # a stage over "all earlier stages" (the report) depends on each of them
        for ref in refs:
            if ref not in result:
                raise ConfigError(f"stage {stage.name!r} reads from {ref!r}, which is not an earlier stage")
        payload = {
            "version": FINGERPRINT_VERSION,
            "kind": stage.kind,
            "settings": stage.settings,
            "upstream": {ref: result[ref] for ref in refs},
        }
        if _kind(stage).files and workdir is not None:
            payload["files"] = {key: _file_stamp(stage_file(stage, key, Path(workdir))) for key in _kind(stage).files}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        result[stage.name] = hashlib.sha256(blob).hexdigest()[:16]
    return result


@dataclass
class PlannedStage:
    name: str
    kind: str
    fingerprint: str
    action: str  # run | resume | skip | rerun | later


@dataclass
class PipelineResult:
    workdir: Path
    plan: list[PlannedStage]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _read_stage_json(stage_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((stage_dir / "stage.json").read_text())
    except (OSError, ValueError):
        return {}


def plan_pipeline(
    spec: PipelineSpec, workdir: str | Path, *, from_stage: str | None = None, until_stage: str | None = None
) -> list[PlannedStage]:
    """What a run would do with each stage: skip (up to date), run, resume, rerun (forced) or later."""
    workdir = Path(workdir)
    names = spec.names
    for label, value in (("--from", from_stage), ("--until", until_stage)):
        if value is not None and value not in names:
            raise ConfigError(f"{label} {value!r} is not a stage; stages are: {', '.join(names)}")
    start = names.index(from_stage) if from_stage else 0
    stop = names.index(until_stage) if until_stage else len(names) - 1
    if start > stop:
        raise ConfigError(f"--from {from_stage!r} comes after --until {until_stage!r}")
    fps = fingerprints(spec, workdir)
    plan: list[PlannedStage] = []
    for position, stage in enumerate(spec.stages):
        stage_dir = workdir / stage.name
        recorded = _read_stage_json(stage_dir).get("fingerprint")
        done = recorded == fps[stage.name] and is_complete(stage_dir)
        if position > stop:
            action = "later"
        elif position >= start and from_stage is not None:
            action = "rerun"
        elif done:
            action = "skip"
        elif recorded == fps[stage.name]:
            action = "resume"
        else:
            action = "run"
        plan.append(PlannedStage(stage.name, stage.kind, fps[stage.name], action))
    return plan


def _load_outputs(workdir: Path, stage_dir: Path) -> dict[str, Any]:
    outputs = _read_stage_json(stage_dir).get("outputs", {})
    return {k: str(workdir / v) if isinstance(v, str) and v.startswith("./") else v for k, v in outputs.items()}


def _store_outputs(workdir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    stored: dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, (str, Path)) and Path(value).is_absolute():
            try:
                value = "./" + str(Path(value).resolve().relative_to(workdir.resolve()))
            except ValueError:
                value = str(value)
        elif isinstance(value, Path):
            value = str(value)
        stored[key] = value
    return stored


def _clear(stage_dir: Path) -> None:
    if stage_dir.exists():
        trash = stage_dir.with_name(f".{stage_dir.name}.old-{os.getpid()}")
        os.replace(stage_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)


def run_pipeline(
    spec: PipelineSpec,
    workdir: str | Path,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    silent: bool = False,
    on_stage: Callable[[PlannedStage], None] | None = None,
) -> PipelineResult:
    """Run the stages that are not up to date, in order; return the plan and every stage's outputs."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan_pipeline(spec, workdir, from_stage=from_stage, until_stage=until_stage)
    result = PipelineResult(workdir, plan)
    with RunLock(workdir):
        for planned, stage in zip(plan, spec.stages):
            stage_dir = workdir / stage.name
            if planned.action == "later":
                break
            if planned.action == "skip":
                result.outputs[stage.name] = _load_outputs(workdir, stage_dir)
                continue
            if on_stage is not None:
                on_stage(planned)
            if planned.action in ("run", "rerun"):
                _clear(stage_dir)
            stage_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                stage_dir / "stage.json",
                {"fingerprint": planned.fingerprint, "kind": stage.kind, "settings": stage.settings, "status": "running"},
            )
            context = StageContext(stage, workdir, stage_dir, result.outputs, silent)
            began = time.perf_counter()
            try:
                outputs = _kind(stage).run(context) or {}
            except PipelinePaused:
                atomic_write_json(stage_dir / "stage.json", {"fingerprint": planned.fingerprint, "kind": stage.kind, "settings": stage.settings,
                                                             "status": "waiting"})
                raise
            result.seconds[stage.name] = time.perf_counter() - began
            stored = _store_outputs(workdir, outputs)
            atomic_write_json(
                stage_dir / "stage.json",
                {
                    "fingerprint": planned.fingerprint,
                    "kind": stage.kind,
                    "settings": stage.settings,
                    "status": "complete",
                    "outputs": stored,
                    "seconds": round(result.seconds[stage.name], 3),
                },
            )
            mark_complete(stage_dir, {"fingerprint": planned.fingerprint})
            result.outputs[stage.name] = _load_outputs(workdir, stage_dir)
    return result
