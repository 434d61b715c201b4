"""Where the passes over the embeddings run: threads of this process (the default) or the workers of a Dask cluster.

Every heavy pass of the rules over all images (the nearest sub-centers, the identity sums,
the leave-one-out angles, the impostor angles, the split rule's 2-means) is written as a
function of one block of rows, ``fn(lo, hi, arrays, **params)``, a module-level function
whose result depends only on those rows. A pass hands its blocks to the *runner* in
effect and combines the results in block order. The blocks, the functions and the order of
combining are the same whichever runner computes them, so every runner gives the same
numbers, bit for bit, and the same decisions:

* :class:`LocalRunner` (the default, and the reference): the blocks on threads of this
  process, each with a single-threaded BLAS (:mod:`cleanface.purify._threads`);
* :class:`DaskRunner`: the blocks as tasks of a Dask distributed cluster
  (``pip install 'cleanface[distributed]'``). The arrays a pass reads travel by file:
  a memory-mapped array (the embeddings purify reads or computes) is opened by the
  workers from its own file, and any other array larger than :data:`INLINE_BYTES` is
  written to the runner's spill folder (on a disk the workers share) for the pass and mapped there;
  the embeddings never pass through the scheduler. Results come back block by block, at
  most ``window`` blocks in flight, so the process that combines them holds no more.

:func:`using` puts a runner in effect for a block of code (``decide(runner=...)`` does);
:func:`current` is what the passes ask for. :func:`connect` starts a local cluster of worker
processes or joins a running scheduler.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cleanface.errors import ConfigError
from cleanface.purify._threads import WORKERS, single_threaded_blas

INLINE_BYTES = 4 << 20  # arrays up to this size travel with the tasks; larger ones by file
INSTALL = "pip install 'cleanface[distributed]'"

BlockFn = Callable[..., Any]


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]``: ``range(n)`` cut into consecutive blocks of ``size`` rows (the last one shorter).

    A runner with a ``max_block`` cuts smaller blocks (tests use it to make many blocks of a
    small set); runners with the same blocks give the same numbers.
    """
    size = max(1, min(int(size), getattr(current(), "max_block", None) or int(size)))
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


class LocalRunner:
    """The blocks on ``workers`` threads of this process, each with a single-threaded BLAS; results in block order."""

    name = "local"
    distributed = False  # the rules' searches build their indexes in this process

    def __init__(self, workers: int = WORKERS, window: int | None = None, max_block: int | None = None) -> None:
        self.workers = max(1, int(workers))
        self.window = window or 2 * self.workers
        self.max_block = max_block

    def imap(self, fn: BlockFn, spans: Iterable[tuple[int, int]], arrays: dict[str, Any], **params: Any) -> Iterator[Any]:
        """``fn(lo, hi, arrays, **params)`` for every span, yielded in order."""
        spans = list(spans)
        if self.workers == 1 or len(spans) <= 1:
            with single_threaded_blas():
                for lo, hi in spans:
                    yield fn(lo, hi, arrays, **params)
            return
        with single_threaded_blas(), ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for lo, hi in spans:
                pending.append(pool.submit(fn, lo, hi, arrays, **params))
                if len(pending) >= self.window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name, "threads": self.workers}

    def close(self) -> None:
        pass


# -- arrays by reference ---------------------------------------------------------------------------------
def array_ref(array: Any, spill: Callable[[np.ndarray], str]) -> tuple:
    """How a worker finds ``array``: its own file when memory-mapped, inline when small, else a spilled ``.npy``."""
    if isinstance(array, np.memmap) and getattr(array, "filename", None) and array.flags.c_contiguous and array.base is not None:
        return ("mmap", os.fspath(array.filename), int(array.offset), array.dtype.str, tuple(array.shape))
    array = np.asarray(array)
    if array.nbytes <= INLINE_BYTES:
        return ("inline", array)
    return ("npy", spill(array))


_OPENED: dict[tuple, np.ndarray] = {}


def open_ref(ref: tuple) -> np.ndarray:
    """The array a reference names (files opened once per worker process, memory-mapped read-only)."""
    kind = ref[0]
    if kind == "inline":
        return ref[1]
    key = ref[1:3] if kind == "mmap" else (ref[1],)
    found = _OPENED.get(key)
    if found is None:
        if kind == "mmap":
            _, path, offset, dtype, shape = ref
            found = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        else:
            found = np.load(ref[1], mmap_mode="r")
        if len(_OPENED) > 64:
            _OPENED.clear()
        _OPENED[key] = found
    return found


def run_block(fn: BlockFn, lo: int, hi: int, refs: dict[str, tuple], params: dict[str, Any]) -> Any:
    """A worker's task: open the arrays, run one block with a single-threaded BLAS."""
    arrays = {name: open_ref(ref) for name, ref in refs.items()}
    with single_threaded_blas():
        return fn(lo, hi, arrays, **params)


class DaskRunner:
    """The blocks as tasks of a Dask distributed ``client``; results in block order, ``window`` in flight.

    ``spill_dir``: where arrays that are neither memory-mapped nor small are written for the
    workers (a folder every worker can read; default: a temporary folder of this machine,
    which suits a local cluster). ``own_cluster``: a local cluster to close with the runner.
    """

    name = "dask"
    distributed = True  # the near-duplicate search spreads its lists over the workers (cleanface.purify.sharded_search)

    def __init__(self, client: Any, *, spill_dir: str | os.PathLike | None = None, window: int | None = None, own_cluster: Any = None,
                 max_block: int | None = None) -> None:
        self.client = client
        self.max_block = max_block
        self.cluster = own_cluster
        self._own_spill = spill_dir is None
        self.spill_dir = tempfile.mkdtemp(prefix="cleanface-spill-") if spill_dir is None else os.fspath(spill_dir)
        os.makedirs(self.spill_dir, exist_ok=True)
        workers = len(client.scheduler_info().get("workers", {})) or 1
        self.window = window or 4 * workers
        self._count = 0

    def spill_path(self, name: str) -> str:
        """A new file path in the spill folder (the caller writes and removes it)."""
        self._count += 1
        return os.path.join(self.spill_dir, f"{self._count}-{os.getpid()}-{name}")

    def _spill(self, array: np.ndarray, written: list[str]) -> str:
        self._count += 1
        path = os.path.join(self.spill_dir, f"array-{os.getpid()}-{self._count}.npy")
        np.save(path, np.ascontiguousarray(array))
        written.append(path)
        return path

    def imap(self, fn: BlockFn, spans: Iterable[tuple[int, int]], arrays: dict[str, Any], **params: Any) -> Iterator[Any]:
        """``fn(lo, hi, arrays, **params)`` for every span on the workers, yielded in order.

        The arrays are referenced as they are when the call starts (a pass may change an
        array between calls: each call spills its own copy, removed when the call ends).
        """
        written: list[str] = []
        try:
            refs = {name: array_ref(value, lambda a: self._spill(a, written)) for name, value in arrays.items()}
            inline = {name: ref for name, ref in refs.items() if ref[0] == "inline"}
            if inline:  # sent to the workers once, not with every task
                names = list(inline)  # a list: a dict's keys would become the data's keys, shared by every pass
                scattered = self.client.scatter([inline[name][1] for name in names], broadcast=True, hash=False)
                refs.update({name: ("inline-future", future) for name, future in zip(names, scattered)})
            pending: deque = deque()
            for lo, hi in spans:
                pending.append(self.client.submit(_run_block_scattered, fn, lo, hi, refs, params, pure=False))
                if len(pending) >= self.window:
                    yield _take(pending.popleft())
            while pending:
                yield _take(pending.popleft())
        finally:
            for path in written:
                with contextlib.suppress(OSError):
                    os.remove(path)

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info()
        return {"runner": self.name, "scheduler": info.get("address"), "workers": len(info.get("workers", {}))}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
        if self._own_spill:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


def _take(future: Any) -> Any:
    result = future.result()
    future.release()
    return result


def _run_block_scattered(fn: BlockFn, lo: int, hi: int, refs: dict[str, tuple], params: dict[str, Any]) -> Any:
    """:func:`run_block` where the small arrays arrive as scattered data (Dask resolves them before the call)."""
    return run_block(fn, lo, hi, {k: ("inline", v[1]) if v[0] == "inline-future" else v for k, v in refs.items()}, params)


# -- the runner in effect ------------------------------------------------------------------------------------
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("cleanface_runner", default=None)


def current() -> Any:
    """The runner in effect (a :class:`LocalRunner` when none was set)."""
    runner = _CURRENT.get()
    return runner if runner is not None else LocalRunner()


@contextlib.contextmanager
def using(runner: Any) -> Iterator[Any]:
    """Put ``runner`` in effect inside the block (None: the default :class:`LocalRunner`)."""
    token = _CURRENT.set(runner)
    try:
        yield current()
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def connect(address: str | None = None, *, workers: int = 2, spill_dir: str | os.PathLike | None = None,
            max_block: int | None = None) -> Iterator[DaskRunner]:
    """A :class:`DaskRunner` on the scheduler at ``address``, or on a local cluster of ``workers`` processes; closed on exit.

    A :class:`~cleanface.errors.ConfigError` naming the install command when Dask
    distributed is not installed, or naming the address when no scheduler answers there.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(f"purify on a cluster needs Dask distributed: {INSTALL}") from None
    cluster = None
    try:
        if address is None:
            if int(workers) < 1:
                raise ConfigError(f"a local cluster needs at least one worker, got {workers}")
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=40)
            client = Client(cluster)
        else:
            client = Client(address, timeout="20s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"no Dask scheduler answered at {address}: {exc}") from None
    runner = DaskRunner(client, spill_dir=spill_dir, own_cluster=cluster, max_block=max_block)
    try:
        yield runner
    finally:
        runner.close()
