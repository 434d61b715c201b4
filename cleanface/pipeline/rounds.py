"""Purify in rounds: re-train on what a round kept, then score the whole input again.

Round 1 is a plain :func:`cleanface.purify.runner.purify` with the given run. Each further
round trains a new sub-center model, with the settings of the given run, on the images the
previous round kept under their own identity (every identity name is kept, so the new run
matches the input), and purifies the *whole* input with it, the previous round's output as
the reference of the calibrated drop rule (:mod:`cleanface.purify.reference`). The images
the previous round dropped were never trained on, so the new model scores them as unseen
faces, and clean images dropped by mistake can come back.

Everything a round writes stays for audit under ``OUT/rounds/`` (``round-1/`` purify
outputs, ``run-2/`` training runs without their resume checkpoints, ``kept-1.npz`` the
training index); while the rounds
run it lives beside ``OUT`` in ``OUT.rounds/``, and each finished step is skipped when the
same command runs again (an interrupted run resumes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cleanface._atomic import RunLock, check_output_dir, is_complete, remove_path
from cleanface.data.open import open_dataset
from cleanface.errors import CleanfaceError, ConfigError
from cleanface.purify.reference import reference_weights
from cleanface.purify.runner import match_run, purify, read_run_names
from cleanface.purify.settings import PurifySettings
from cleanface.training.trainer import train

WORK_SUFFIX = ".rounds"
MAX_ROUNDS = 5


def round_train_settings(run_dir: str | os.PathLike) -> dict:
    """The training settings of ``run_dir`` (its ``config.json``), as keyword arguments of :func:`train`."""
    settings = dict(json.loads((Path(run_dir) / "config.json").read_text())["settings"])
    extra = settings.pop("extra", None) or {}
    return {**settings, **extra}


def kept_index(data: str | os.PathLike, run_dir: str | os.PathLike, reference: Path, out: Path) -> Path:
    """Save the images ``reference`` kept under their own identity as an index of ``data`` (every identity name kept)."""
    index = match_run(open_dataset(data, silent=True), read_run_names(run_dir), run_dir, data)
    weights = reference_weights(reference, index)
    index.subset(np.flatnonzero(weights > 0), renumber=False).save(out)
    return out


# Two rounds flag better than one on 5 of the 6 real noisy sets of BENCHMARKS.md ("Which signal finds the noise": F1 +0.012
# to +0.084; CelebA 40%: -0.004) and on the demo set (0.787 -> 0.862), for about 2.1 trainings of CPU. They were not the default while the merge rule
# compared dominant sub-centers at a fixed 35 degrees, which merged 15 of the demo's 100 identities in round 2; the calibrated
# merge rule merges none there.
DEFAULT_ROUNDS = 2


def purify_in_rounds(
    run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *, rounds: int = DEFAULT_ROUNDS,
    settings: PurifySettings | None = None, fmt: str = "folder", truth: str | os.PathLike | None = None,
    overwrite: bool = False, copy: bool = False, device: str = "cpu", silent: bool = False, runner: Any = None,
) -> Path:
    """Purify ``data`` in ``rounds`` rounds (see the module docstring); the last round's output is ``out``.

    ``rounds=1`` is :func:`cleanface.purify.runner.purify`. The other arguments are purify's
    (``runner``: where each round's passes run, :mod:`cleanface.purify.shards`);
    intermediate rounds always write folder outputs. Returns ``out``.
    """
    if not 1 <= int(rounds) <= MAX_ROUNDS:
        raise ConfigError(f"rounds must lie within [1, {MAX_ROUNDS}], got {rounds!r}")
    out = Path(out)
    kwargs = dict(settings=settings, truth=truth, copy=copy, device=device, silent=silent, runner=runner)
    if rounds == 1:
        return purify(run_dir, data, out, fmt=fmt, overwrite=overwrite, **kwargs)
    work = Path(f"{out}{WORK_SUFFIX}")
    with RunLock.beside(out):  # a second purify into the same output is refused while the rounds run (re-entrant for purify)
        if is_complete(out) and not overwrite and work.is_dir():  # interrupted after the last round, before the move
            _move_into(work, out)
            return out
        check_output_dir(out, overwrite=overwrite)  # refused before any round, not after them
        if overwrite:
            remove_path(work)
        try:
            _rounds(Path(run_dir), data, out, work, rounds, fmt, overwrite, kwargs)
        except CleanfaceError:
            if not any(is_complete(d) for d in work.glob("round-*")):
                remove_path(work)  # refused before any round finished: nothing is left behind
            raise
        _move_into(work, out)
    return out


def _rounds(run_dir: Path, data: str | os.PathLike, out: Path, work: Path, rounds: int, fmt: str, overwrite: bool, kwargs: dict) -> None:
    """Rounds 1..rounds-1 into ``work`` (each finished step skipped), then the last one into ``out``."""
    run, reference = run_dir, None
    for r in range(1, rounds):
        target = work / f"round-{r}"
        if not is_complete(target):
            purify(run, data, target, overwrite=True, reference=reference, **kwargs)
        training = kept_index(data, run_dir, target, work / f"kept-{r}.npz")
        run = work / f"run-{r + 1}"
        train(training, run, resume=True, silent=kwargs["silent"], **{**round_train_settings(run_dir), "device": kwargs["device"]})
        reference = target
    purify(run, data, out, fmt=fmt, overwrite=overwrite, reference=reference, **kwargs)


def _move_into(work: Path, out: Path) -> None:
    """Move the finished rounds into ``out/rounds``, without the round runs' resume checkpoints (their model.pt stays)."""
    for checkpoints in work.glob("run-*/checkpoints"):
        remove_path(checkpoints)
    os.replace(work, out / "rounds")
