"""Purification: sub-center analysis and decisions as pure array functions, and the purify runner.

* :mod:`cleanface.purify.analysis`: nearest and dominant sub-centers, angles, per-identity statistics;
* :mod:`cleanface.purify.decisions`: the rules (drop, relabel, merge, split, duplicates,
  outlier groups) combined by :func:`decide`;
* :mod:`cleanface.purify.settings`: :class:`PurifySettings` with every default explained;
* :mod:`cleanface.purify.runner`: :func:`purify`, from a run and a dataset to a cleaned dataset.
"""

from cleanface.purify.decisions import ACTIONS, REASONS, Decisions, decide
from cleanface.purify.settings import PurifySettings

__all__ = ["ACTIONS", "REASONS", "Decisions", "PurifySettings", "decide"]
