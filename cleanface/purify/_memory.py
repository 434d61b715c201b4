"""Handing freed memory back to the operating system between purify stages.

FAISS keeps each inverted list in its own allocation of a few MB, below glibc's mmap
threshold, so the lists live on the heap. When an index is freed, glibc keeps those
pages for reuse; the 2 GB index over a million sub-centers would then still count
against the machine while the much larger index over all samples is built.
:func:`release_free_memory` asks glibc to return free heap pages (``malloc_trim``); on
other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return free heap memory to the operating system; True when the C library could be asked."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True
