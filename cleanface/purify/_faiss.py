"""FAISS inner-product indexes chosen by data size, described by their factory string.

Below ``exact_below`` vectors the index is exact (``Flat``); above, it is
``IVF{nlist},Flat`` with ``nlist`` the power of two nearest sqrt(n) and ``nprobe``
set by name, or ``IVF{nlist},SQfp16`` with ``storage="float16"``: the same cells, the
vectors kept as float16 (half the memory: 1 KB per 512-d vector; their inner products
are then within :data:`FP16_COS_ERROR` of the float32 ones). The factory string and search parameters are returned so that a result
can be reproduced. Vectors of any float dtype (a float16 memmap is fine) are cast to
float32 and L2-normalised chunk by chunk (inner product = cosine); rows holding NaN or
inf become zero vectors, whose score with anything is 0.

An IVF index is searched cell by cell rather than query by query (:func:`search`):
each query is sent to its ``nprobe`` nearest centroids, as FAISS does, and then every
cell scores all the queries sent to it against all its vectors in one matrix product
(BLAS), read straight from FAISS's inverted lists (float16 lists are converted one cell
at a time). The candidates are the ones FAISS's
own IVF-Flat search scans and the scores are exact inner products, so the result is the
same up to float rounding and the order of ties; on a few cores it is several times
faster, because a cell's vectors are read once per block of queries instead of once per
query. Centroid assignments (when indexing and when searching) are matrix products too,
and all of this runs on threads with a single-threaded BLAS each (:mod:`._threads`).
:func:`self_search` searches the indexed vectors themselves without reading or
assigning them again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from cleanface.progress import make_progress
from cleanface.purify._threads import parallel_map
from cleanface.purify.analysis import unit_rows

faiss.omp_set_num_threads(os.cpu_count() or 1)

SEARCH_CHUNK = 16_384
IVF_QUERY_CHUNK = 65_536  # queries per pass of the cell-by-cell IVF search (128 MB as float32 at 512-d)
SELF_QUERY_CHUNK_FP16 = 1_048_576  # queries per self-search pass over float16 lists (1 GB at 512-d): each pass converts every cell once
FP16_CODEC = "SQfp16"  # the factory's name for vectors kept as raw float16
FP16_COS_ERROR = 2e-3  # bound on |float16-stored inner product - float32 one| for unit vectors (2 x 2^-11 per side, rounded up)
PROBE_BLOCK = 4096  # queries per matrix product with the centroids
FLAT_BLOCK = 2048  # queries per call of an exact (flat) search
FEW = 5  # top_columns picks up to this many by repeated arg-maxima (faster than a partition up to about 5, measured)


@dataclass
class BuiltIndex:
    """A FAISS index with the string that rebuilds it.

    Attributes
    ----------
    index : faiss.Index
    factory : str
        The ``index_factory`` string, e.g. ``"IVF1024,Flat"``.
    params : str
        Search parameters set by name, e.g. ``"nprobe=16"`` (empty for ``Flat``).
    probes : ndarray (n, nprobe), int64, or None
        For an IVF index, the ``nprobe`` nearest cells of each indexed vector, nearest
        first (the vector itself went to the first); :func:`self_search` uses them.
    """

    index: faiss.Index
    factory: str
    params: str
    probes: np.ndarray | None = None

    @property
    def stores_float16(self) -> bool:
        """Whether the index keeps its vectors as float16 (``SQfp16``)."""
        return self.factory.endswith(FP16_CODEC)

    def describe(self) -> str:
        """``factory`` plus the search parameters, e.g. ``"IVF1024,Flat nprobe=16"``."""
        return f"{self.factory} {self.params}".strip()


def choose_factory(n: int, *, exact_below: int = 50_000, nprobe: int | None = None, storage: str = "float32") -> tuple[str, str]:
    """The factory string and search parameters for ``n`` vectors.

    ``nlist`` is the power of two nearest sqrt(n): on few cores the coarse quantizer
    (nlist inner products per query) costs as much as the scan, so the usual 4-16 x
    sqrt(n) does not pay. ``nprobe`` defaults to max(8, nlist // 32). ``storage``
    (``"float32"`` or ``"float16"``) is how an IVF index keeps its vectors; an exact
    index is always float32.
    """
    if storage not in ("float32", "float16"):
        raise ValueError(f"storage must be float32 or float16, got {storage!r}")
    if n < exact_below:
        return "Flat", ""
    nlist = 2 ** int(round(math.log2(math.sqrt(n))))
    nprobe = max(8, nlist // 32) if nprobe is None else max(1, min(nprobe, nlist))
    return f"IVF{nlist},{'Flat' if storage == 'float32' else FP16_CODEC}", f"nprobe={nprobe}"


def build_index(
    vectors: np.ndarray, *, exact_below: int = 50_000, nprobe: int | None = None, seed: int = 0, silent: bool = True, what: str = "vectors",
    storage: str = "float32",
) -> BuiltIndex:
    """Build an inner-product index over the rows of ``vectors`` (n, d), normalised chunk by chunk.

    IVF centroids come from 10 k-means iterations over at most 32 * nlist rows drawn
    with ``seed``; each vector then goes to the cell of its nearest centroid, found
    together with its ``nprobe`` nearest (kept in :attr:`BuiltIndex.probes`).
    ``storage="float16"`` keeps an IVF index's vectors as float16 (see :func:`choose_factory`).
    """
    n, d = vectors.shape
    factory, params = choose_factory(n, exact_below=exact_below, nprobe=nprobe, storage=storage)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if factory.endswith(FP16_CODEC):
        faiss.extract_index_ivf(index).by_residual = False  # the lists hold the vectors themselves, not their offsets from the centroid
    if not index.is_trained:
        train_quantizer(index, vectors, seed)
    if params:
        name, value = params.split("=")
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))
    ivf = _ivf_of(index)
    step = SEARCH_CHUNK * 4
    with make_progress(silent=silent) as progress:
        if ivf is None:
            task = progress.add_task(f"index {what}", total=n)
            for s in range(0, n, step):
                index.add(_clean(vectors[s : s + step]))
                progress.advance(task, min(step, n - s))
            return BuiltIndex(index, factory, params, None)
        # two passes: the cells of every vector first, so that each inverted list is allocated
        # once at its final size (grown chunk by chunk, the lists took a quarter more memory)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        probes = np.empty((n, max(1, min(ivf.nprobe, ivf.nlist))), dtype=np.int64)
        task = progress.add_task(f"index {what}", total=2 * n)
        for s in range(0, n, step):
            probes[s : s + step] = nearest_cells(_clean(vectors[s : s + step]), centroids, probes.shape[1])
            progress.advance(task, min(step, n - s))
        _reserve_lists(ivf, np.bincount(probes[:, 0], minlength=ivf.nlist))
        for s in range(0, n, step):
            x = _clean(vectors[s : s + step])
            cell = np.ascontiguousarray(probes[s : s + len(x), 0])
            index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(cell))
            progress.advance(task, len(x))
    return BuiltIndex(index, factory, params, probes)


def train_quantizer(index: faiss.Index, vectors: np.ndarray, seed: int) -> None:
    """Train an IVF index's centroids: 10 k-means iterations over at most 32 * nlist rows of ``vectors`` drawn with ``seed``."""
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = 1234 + seed
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1
    rows = np.random.default_rng(seed).choice(len(vectors), size=min(len(vectors), 32 * ivf.nlist), replace=False)
    index.train(_clean(vectors[np.sort(rows)]))


def _reserve_lists(ivf: faiss.IndexIVF, sizes: np.ndarray) -> None:
    """Give each (empty) inverted list the capacity for ``sizes[c]`` entries; growing stays within it."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists):
        return
    for c in np.flatnonzero(sizes):
        lists.resize(int(c), int(sizes[c]))  # std::vector keeps its capacity when shrunk
        lists.resize(int(c), 0)


def search(
    built: BuiltIndex, queries: np.ndarray, k: int, *, min_score: float | None = None, silent: bool = True, what: str = "search"
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best inner products of each query row: (scores float32 (Q, k), ids int64 (Q, k)); missing ids are -1.

    Rows are sorted best first. With ``min_score``, results scoring below it are left out
    (id -1, score -inf): the same as filtering the plain result afterwards, only faster
    on an IVF index, where cells without any score that high are skipped.
    """
    return _search(built, len(queries), lambda s, e: _clean(queries[s:e]), None, k, min_score, silent, what)


def self_search(built: BuiltIndex, k: int, *, min_score: float | None = None, silent: bool = True, what: str = "search") -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` with the indexed vectors themselves as the queries, in index order.

    The queries are read back from the index (already normalised) and, for an IVF
    index, sent to the cells :func:`build_index` found for them (``built.probes``), so
    neither is computed twice.
    """
    n = built.index.ntotal
    ivf = _ivf_of(built.index)
    probes = None
    if ivf is not None:
        want = max(1, min(ivf.nprobe, ivf.nlist))
        if built.probes is not None and len(built.probes) == n and built.probes.shape[1] >= want:
            probes = built.probes[:, :want]
        ivf.make_direct_map(True)  # for reconstruct_n: one int64 per vector
    try:
        if ivf is not None and _is_fp16(ivf):
            return _search(built, n, lambda s, e: _reconstruct_fp16(built.index, s, e), probes, k, min_score, silent, what, step=SELF_QUERY_CHUNK_FP16)
        return _search(built, n, lambda s, e: built.index.reconstruct_n(s, e - s), probes, k, min_score, silent, what)
    finally:
        if ivf is not None:
            ivf.make_direct_map(False)


def _reconstruct_fp16(index: faiss.Index, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a float16-storing index, as float16 (exact: they were stored so), decoded piece by piece."""
    out = np.empty((stop - start, index.d), dtype=np.float16)
    for s in range(start, stop, IVF_QUERY_CHUNK):
        e = min(stop, s + IVF_QUERY_CHUNK)
        out[s - start : e - start] = index.reconstruct_n(s, e - s)
    return out


def _search(
    built: BuiltIndex, q: int, rows: Callable[[int, int], np.ndarray], probes: np.ndarray | None, k: int,
    min_score: float | None, silent: bool, what: str, step: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``q`` queries whose normalised rows ``rows(start, stop)`` returns, ``step`` at a time."""
    k = max(1, min(k, built.index.ntotal))
    scores = np.full((q, k), -np.inf, dtype=np.float32)
    ids = np.full((q, k), -1, dtype=np.int64)
    ivf = _ivf_of(built.index)
    step = step or (SEARCH_CHUNK if ivf is None else IVF_QUERY_CHUNK)
    with make_progress(silent=silent) as progress:
        task = progress.add_task(what, total=q)
        for s in range(0, q, step):
            chunk = rows(s, min(q, s + step))
            if ivf is None:
                sc, found = _search_flat(built.index, chunk, k)
            else:
                known = None if probes is None else probes[s : s + len(chunk)]
                sc, found = _search_ivf_by_cell(ivf, chunk, k, min_score, known)
            if min_score is not None:
                low = ~(sc >= min_score)
                sc[low], found[low] = -np.inf, -1
            scores[s : s + len(chunk)], ids[s : s + len(chunk)] = sc, found
            progress.advance(task, len(chunk))
    return scores, ids


def _search_flat(index: faiss.Index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(x, k)`` over blocks of queries on threads, FAISS and its BLAS single-threaded in each.

    The same exact search; on shared cores a single FAISS call with several OpenMP
    threads mostly waits for the slowest of them.
    """
    def one(s: int) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1)  # for this worker thread only
        return index.search(x[s : s + FLAT_BLOCK], k)

    parts = parallel_map(one, range(0, len(x), FLAT_BLOCK))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF-Flat or IVF-SQfp16 part of ``index`` (searched cell by cell), None for any other index."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    flat_codes = ivf.code_size == ivf.d * 4 and isinstance(index, faiss.IndexIVFFlat)
    return ivf if flat_codes or _is_fp16(ivf) else None


def _is_fp16(ivf: faiss.IndexIVF) -> bool:
    """Whether ``ivf`` stores its vectors as raw float16 (``SQfp16``)."""
    sq = faiss.downcast_index(ivf)
    return isinstance(sq, faiss.IndexIVFScalarQuantizer) and sq.sq.qtype == faiss.ScalarQuantizer.QT_fp16 and ivf.code_size == ivf.d * 2


def _cell(ivf: faiss.IndexIVF, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The vectors (m, d) float32 and ids (m,) int64 of inverted list ``c``: views into the index (float16 lists: a float32 copy)."""
    lists = ivf.invlists
    m = lists.list_size(c)
    if m == 0:
        return np.zeros((0, ivf.d), np.float32), np.zeros(0, np.int64)
    codes = faiss.rev_swig_ptr(lists.get_codes(c), m * lists.code_size)
    ids = faiss.rev_swig_ptr(lists.get_ids(c), m)
    if lists.code_size == ivf.d * 2:
        return np.frombuffer(codes, dtype=np.float16).reshape(m, ivf.d).astype(np.float32), np.frombuffer(ids, dtype=np.int64)
    return np.frombuffer(codes, dtype=np.float32).reshape(m, ivf.d), np.frombuffer(ids, dtype=np.int64)


def _search_ivf_by_cell(
    ivf: faiss.IndexIVF, x: np.ndarray, k: int, min_score: float | None, probes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """IVF search of the normalised queries ``x`` (B, d), float32 or float16, one matrix product per probed cell.

    Each query goes to its ``nprobe`` nearest centroids (or to the given ``probes``,
    (B, nprobe)); each cell keeps the best ``k`` of its scores per query in that query's
    slot for the probe, and the slots are then merged (ties: nearer probe first). Cells
    are scored on threads, each with a single-threaded BLAS; each writes its own slots,
    so the result does not depend on the order in which they finish.
    """
    b = len(x)
    if probes is None:
        probes = nearest_cells(x, ivf.quantizer.reconstruct_n(0, ivf.nlist), max(1, min(ivf.nprobe, ivf.nlist)))
    nprobe = probes.shape[1]
    slot_scores = np.full((b, nprobe * k), -np.inf, dtype=np.float32)
    slot_ids = np.full((b, nprobe * k), -1, dtype=np.int64)

    def score(cell: tuple[int, np.ndarray, np.ndarray]) -> None:
        c, rows, ranks = cell
        vectors, ids = _cell(ivf, c)
        m = len(ids)
        if m == 0:
            return
        gram = np.asarray(x[rows], dtype=np.float32) @ vectors.T  # (rows, m); float16 queries are converted here, a cell's share at a time
        if min_score is not None:
            hit = gram.max(axis=1) >= min_score
            if not hit.any():
                return
            gram, rows, ranks = gram[hit], rows[hit], ranks[hit]
        kk = min(k, m)
        top = top_columns(gram, kk, ordered=False)
        cols = ranks[:, None] * k + np.arange(kk)
        slot_scores[rows[:, None], cols] = np.take_along_axis(gram, top, axis=1)
        slot_ids[rows[:, None], cols] = ids[top]

    cells = probes.ravel()
    order = np.argsort(cells, kind="stable")  # by cell, then query, then probe rank
    present, starts, sizes = np.unique(cells[order], return_index=True, return_counts=True)
    work = [(int(c), order[st : st + sz] // nprobe, order[st : st + sz] % nprobe) for c, st, sz in zip(present, starts, sizes)]
    work.sort(key=lambda w: -len(w[1]) * ivf.invlists.list_size(w[0]))  # biggest first, for an even finish
    parallel_map(score, work)
    pick = np.argsort(-slot_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(slot_scores, pick, axis=1), np.take_along_axis(slot_ids, pick, axis=1)


def nearest_cells(x: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` centroids of highest inner product with each row of ``x``, best first: int64 (B, nprobe)."""
    if len(x) == 0:
        return np.zeros((0, nprobe), np.int64)
    blocks = parallel_map(lambda s: top_columns(np.asarray(x[s : s + PROBE_BLOCK], dtype=np.float32) @ centroids.T, nprobe), range(0, len(x), PROBE_BLOCK))
    return np.concatenate(blocks)


def top_columns(scores: np.ndarray, k: int, *, ordered: bool = True) -> np.ndarray:
    """Column indices of the ``k`` largest entries of each row of ``scores`` (R, M): int64 (R, min(k, M)).

    Best first when ``ordered`` (ties: lower column first); in no particular order otherwise.
    """
    m = scores.shape[1]
    k = min(k, m)
    if 0 < k <= FEW and k < m:
        return _top_by_argmax(scores, k)
    if k == m:
        top = np.broadcast_to(np.arange(m), scores.shape)
    else:
        top = np.argpartition(scores, m - k, axis=1)[:, m - k :]
    if ordered:
        picked = np.take_along_axis(scores, top, axis=1)
        top = np.take_along_axis(top, np.lexsort((top, -picked), axis=1), axis=1)
    return np.ascontiguousarray(top)


def _top_by_argmax(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_columns` for a few ``k``, best first, ties to the lower column: ``k`` arg-maxima of a copy (faster than a partition)."""
    work = np.array(scores, dtype=np.float32 if scores.dtype == np.float16 else scores.dtype)
    work[np.isnan(work)] = -np.inf  # NaN never wins (the scores here come from finite, cleaned rows)
    rows = np.arange(len(work))
    top = np.empty((len(work), k), dtype=np.int64)
    for i in range(k):
        top[:, i] = np.argmax(work, axis=1)
        work[rows, top[:, i]] = -np.inf
    return top


def _clean(x: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32, non-finite rows zeroed, L2-normalised (:func:`~cleanface.purify.analysis.unit_rows`)."""
    return np.ascontiguousarray(unit_rows(x, dtype=np.float32, tol=0.0, zero_non_finite=True))
