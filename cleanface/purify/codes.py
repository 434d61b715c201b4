"""The action and reason codes of the purification decisions.

Every sample gets one action (an index into :data:`ACTIONS`) and one reason (an index
into :data:`REASONS`, ``R_NONE`` for kept images). The codes are stored as int8 in
:class:`cleanface.purify.decisions.Decisions` and written by name in ``decisions.csv``.
"""

from __future__ import annotations

ACTIONS = ("keep", "drop", "relabel", "merge", "dedup", "new-identity")
KEEP, DROP, RELABEL, MERGE, DEDUP, NEW_IDENTITY = range(len(ACTIONS))
IN_OUTPUT = (KEEP, RELABEL, MERGE, NEW_IDENTITY)  # actions whose images are in the cleaned dataset

REASONS = (
    "",
    "angle above threshold",
    "non-dominant sub-center",
    "non-finite embedding",
    "closer to another identity",
    "identity merged",
    "near-duplicate",
    "second sub-center group",
    "outlier group",
    "noise score above cut",
)
(R_NONE, R_ANGLE, R_NON_DOMINANT, R_NON_FINITE, R_CLOSER, R_MERGED, R_DUPLICATE, R_SPLIT, R_OUTLIER_GROUP, R_NOISE_SCORE) = range(len(REASONS))

__all__ = [
    "ACTIONS", "DEDUP", "DROP", "IN_OUTPUT", "KEEP", "MERGE", "NEW_IDENTITY", "RELABEL", "REASONS",
    "R_ANGLE", "R_CLOSER", "R_DUPLICATE", "R_MERGED", "R_NONE", "R_NON_DOMINANT", "R_NOISE_SCORE", "R_NON_FINITE", "R_OUTLIER_GROUP", "R_SPLIT",
]
