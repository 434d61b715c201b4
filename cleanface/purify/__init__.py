"""Purification: sub-center analysis and decisions as pure array functions, and the purify runner.

* :mod:`cleanface.purify.analysis`: nearest and dominant sub-centers, angles, per-identity statistics;
* :mod:`cleanface.purify.decisions`: :class:`Decisions` and :func:`decide`, which applies the rules in order;
* :mod:`cleanface.purify.rules`: each rule (angle drop, merge, split, relabel, outlier groups,
  dedup, advice) as a function over one shared :class:`~cleanface.purify.rules.DecisionState`;
* :mod:`cleanface.purify.codes`: the action and reason codes;
* :mod:`cleanface.purify.neighbours`: the FAISS searches behind the rules (:mod:`._faiss`: the indexes);
* :mod:`cleanface.purify.naming`, :mod:`cleanface.purify.clock`: names of new identities, seconds per stage;
* :mod:`cleanface.purify.sanity`: refuses the result of a model that did not learn;
* :mod:`cleanface.purify.settings`: :class:`PurifySettings` with every default explained;
* :mod:`cleanface.purify.runner`: :func:`purify`, from a run and a dataset to a cleaned dataset.
"""

from cleanface.purify.decisions import ACTIONS, REASONS, Decisions, decide
from cleanface.purify.settings import PurifySettings

__all__ = ["ACTIONS", "REASONS", "Decisions", "PurifySettings", "decide"]
