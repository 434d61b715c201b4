"""Names of the identities that purification creates (``<name>#2``, ``outlier-group-<n>``)."""

from __future__ import annotations


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first not in ``taken``, which is then added to ``taken``."""
    name, n = base, 2
    while name in taken:
        name = f"{base}-{n}"
        n += 1
    taken.add(name)
    return name
