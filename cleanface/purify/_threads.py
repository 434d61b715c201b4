"""Heavy numpy work on a few shared cores: independent blocks on threads, each with a single-threaded BLAS.

On a machine with few cores that other processes also use, one multi-threaded BLAS call
on a small or medium matrix spends most of its time with its threads waiting for each
other (a thread that the system has descheduled holds up all the others). Independent
single-threaded calls side by side, handed out to a pool of threads as they finish, keep
every core that is free busy instead. Numpy releases the GIL in matrix products, in
elementwise operations on large arrays and in partitions and sorts, so Python threads
suffice.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

try:  # installed with scikit-learn, which hdbscan requires
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

WORKERS = os.cpu_count() or 1
T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]``, in order, on ``WORKERS`` threads with a single-threaded BLAS."""
    items = list(items)
    with single_threaded_blas():
        if WORKERS <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(fn, items))


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit every loaded BLAS to one thread inside the block (no-op without threadpoolctl)."""
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield
