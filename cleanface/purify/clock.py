"""Seconds per stage of :func:`cleanface.purify.decisions.decide`, with an optional hook per stage."""

from __future__ import annotations

import time
from typing import Callable


class StageClock:
    """Adds the wall time between :meth:`stage` calls to the stage that was running.

    Attributes
    ----------
    timings : dict of str to float
        Seconds per stage name (rounded to 0.1 ms; a stage entered twice adds up).
    """

    def __init__(self, hook: Callable[[str], None] | None = None) -> None:
        self.hook, self.timings, self.name, self.start = hook, {}, None, 0.0

    def stage(self, name: str | None) -> None:
        """End the running stage and start ``name`` (None: stop); the hook gets ``name`` or ``"done"``."""
        now = time.perf_counter()
        if self.name is not None:
            self.timings[self.name] = round(self.timings.get(self.name, 0.0) + now - self.start, 4)
        self.name, self.start = name, now
        if self.hook is not None:
            self.hook(name or "done")
