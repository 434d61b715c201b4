"""Helpers for the reliability tests: the real command line in its own process, killed or stopped on cue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleanface.data.synthetic import make_synthetic

DRIVER = Path(__file__).with_name("_kill_driver.py")
REPO = Path(__file__).resolve().parents[2]
SIZE = 32
TRAIN = ["--input-size", str(SIZE), "--embedding-size", "16", "--batch-size", "16", "--device", "cpu", "--silent"]


@dataclass
class Result:
    """What one command-line process did: exit status, output and the events it reached."""

    returncode: int
    output: str
    events: list[str]

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            "COLUMNS": "200", "NO_COLOR": "1"}


class _Forker:
    """One ``_kill_driver.py --serve`` process: imports cleanface once, forks a fresh child per command."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def ask(self, request: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(DRIVER), "--serve"], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the command server died"
        return json.loads(answer)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_FORKER = _Forker()


@pytest.fixture(autouse=True, scope="session")
def _close_forker():
    yield
    _FORKER.close()


def _request(op: str, args: list, log: Path, output: Path, *, kill_at: int = 0, kill_on: str = "", stop_at: int = 0,
             cwd: Path | None = None) -> dict:
    return {"op": op, "args": list(map(str, args)), "log": str(log), "output": str(output), "kill_at": kill_at, "kill_on": kill_on,
            "stop_at": stop_at, "cwd": str(cwd) if cwd else None}


def cleanface(args: list, *, log: Path | None = None, kill_at: int = 0, kill_on: str = "", cwd: Path | None = None) -> Result:
    """Run ``cleanface ARGS`` in a fresh process (forked from a pre-loaded interpreter) and wait for it.

    ``kill_at=k`` SIGKILLs the process before its k-th event, ``kill_on=NAME`` before its first
    event called NAME (see ``_kill_driver.py``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        log = log or Path(tmp) / "events.log"
        output = Path(tmp) / "output.txt"
        answer = _FORKER.ask(_request("run", args, log, output, kill_at=kill_at, kill_on=kill_on, cwd=cwd))
        return Result(int(answer["returncode"]), output.read_text(errors="replace"), read_events(log))


class Started:
    """A ``cleanface`` process started with :func:`start`, running (or stopped) beside the test."""

    def __init__(self, pid: int, log: Path, output: Path) -> None:
        self.pid, self.log, self.output = pid, log, output

    def state(self) -> str:
        """The process state letter from /proc (``T``: stopped), or ``"gone"``."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return "gone"

    def wait(self) -> Result:
        answer = _FORKER.ask({"op": "wait", "pid": self.pid})
        return Result(int(answer["returncode"]), self.output.read_text(errors="replace"), read_events(self.log))


def start(args: list, folder: Path, *, stop_at: int = 0) -> Started:
    """Start ``cleanface ARGS`` in a fresh process and return at once; ``stop_at=k`` makes it SIGSTOP itself before its k-th event."""
    log, output = folder / "started.log", folder / "started.txt"
    answer = _FORKER.ask(_request("start", args, log, output, stop_at=stop_at))
    return Started(int(answer["pid"]), log, output)


def read_events(log: Path) -> list[str]:
    if not log.is_file():
        return []
    return [line.split("\t", 1)[1] for line in log.read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory) -> Path:
    """6 synthetic identities x 8 images at 32x32 (48 images: 3 batches of 16)."""
    return make_synthetic(tmp_path_factory.mktemp("reliability") / "faces", identities=6, per_identity=8, size=SIZE, seed=0, silent=True)


def train_args(command: str, data: Path, out: Path, cache: Path, extra: list[str]) -> list:
    """A tiny training run: 3 epochs of 3 steps, a checkpoint every 2 steps."""
    return [command, data, "--out", out, *TRAIN, "--epochs", "3", "--checkpoint-every", "2", "--cache-dir", cache, *extra]


@pytest.fixture(scope="session")
def sub_ref(tiny_faces, tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted train-subcenter run and its events (a kill test's reference; the model embed and purify use)."""
    root = tmp_path_factory.mktemp("subrun")
    result = cleanface(train_args("train-subcenter", tiny_faces, root / "run", root / "cache", ["--k", "2"]), log=root / "ref.log")
    assert result.returncode == 0, result.output
    return root / "run", result.events


@pytest.fixture(scope="session")
def sub_run(sub_ref) -> Path:
    return sub_ref[0]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """In-process training here uses one thread, like the command processes (OMP_NUM_THREADS=1): steady on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
