"""FAISS inner-product indexes chosen by data size, described by their factory string.

Below ``exact_below`` vectors the index is exact (``Flat``); above, it is
``IVF{nlist},Flat`` with ``nlist`` about 4 * sqrt(n) (a power of two) and ``nprobe``
set by name. The factory string and search parameters are returned so that a result
can be reproduced. Vectors of any float dtype (a float16 memmap is fine) are cast to
float32 and L2-normalised chunk by chunk (inner product = cosine); rows holding NaN or
inf become zero vectors, whose score with anything is 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import faiss
import numpy as np

from cleanface.progress import make_progress
from cleanface.purify.analysis import l2_normalize

faiss.omp_set_num_threads(os.cpu_count() or 1)

SEARCH_CHUNK = 16_384


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
    """

    index: faiss.Index
    factory: str
    params: str

    def describe(self) -> str:
        """``factory`` plus the search parameters, e.g. ``"IVF1024,Flat nprobe=16"``."""
        return f"{self.factory} {self.params}".strip()


def choose_factory(n: int, *, exact_below: int = 50_000, nprobe: int | None = None) -> tuple[str, str]:
    """The factory string and search parameters for ``n`` vectors.

    ``nlist`` is the power of two nearest sqrt(n): on few cores the coarse quantizer
    (nlist inner products per query) costs as much as the scan, so the usual 4-16 x
    sqrt(n) does not pay. ``nprobe`` defaults to max(8, nlist // 32).
    """
    if n < exact_below:
        return "Flat", ""
    nlist = 2 ** int(round(math.log2(math.sqrt(n))))
    nprobe = max(8, nlist // 32) if nprobe is None else max(1, min(nprobe, nlist))
    return f"IVF{nlist},Flat", f"nprobe={nprobe}"


def build_index(
    vectors: np.ndarray, *, exact_below: int = 50_000, nprobe: int | None = None, seed: int = 0, silent: bool = True, what: str = "vectors"
) -> BuiltIndex:
    """Build an inner-product index over the rows of ``vectors`` (n, d), normalised chunk by chunk.

    IVF centroids come from 10 k-means iterations over at most 32 * nlist rows drawn
    with ``seed``.
    """
    n, d = vectors.shape
    factory, params = choose_factory(n, exact_below=exact_below, nprobe=nprobe)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = 1234 + seed
        ivf.cp.niter = 10
        ivf.cp.min_points_per_centroid = 1
        rows = np.random.default_rng(seed).choice(n, size=min(n, 32 * ivf.nlist), replace=False)
        index.train(_clean(vectors[np.sort(rows)]))
    if params:
        name, value = params.split("=")
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))
    with make_progress(silent=silent) as progress:
        task = progress.add_task(f"index {what}", total=n)
        for s in range(0, n, SEARCH_CHUNK * 4):
            index.add(_clean(vectors[s : s + SEARCH_CHUNK * 4]))
            progress.advance(task, min(SEARCH_CHUNK * 4, n - s))
    return BuiltIndex(index, factory, params)


def search(built: BuiltIndex, queries: np.ndarray, k: int, *, silent: bool = True, what: str = "search") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best inner products of each query row: (scores float32 (Q, k), ids int64 (Q, k)); missing ids are -1."""
    q = len(queries)
    k = max(1, min(k, built.index.ntotal))
    scores = np.full((q, k), -np.inf, dtype=np.float32)
    ids = np.full((q, k), -1, dtype=np.int64)
    with make_progress(silent=silent) as progress:
        task = progress.add_task(what, total=q)
        for s in range(0, q, SEARCH_CHUNK):
            chunk = _clean(queries[s : s + SEARCH_CHUNK])
            scores[s : s + len(chunk)], ids[s : s + len(chunk)] = built.index.search(chunk, k)
            progress.advance(task, len(chunk))
    return scores, ids


def _clean(x: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32, non-finite rows zeroed, L2-normalised."""
    x = np.array(x, dtype=np.float32)
    x[~np.isfinite(x).all(axis=1)] = 0.0
    return np.ascontiguousarray(l2_normalize(x))
