"""Coherent groups among the dropped images (HDBSCAN) and connected components of pair graphs.

Dropped images are not all junk: several photographs of one person outside the set, all
given wrong labels, form a tight group. HDBSCAN (euclidean metric on L2-normalised
embeddings, where squared distance = 2 - 2 cos) finds such groups without a count.

HDBSCAN's trees degrade in high dimensions (at 512-d its cost grows with the square of
the point count: about a minute for 10k points on one core), so the normalised
embeddings are first projected on their top ``dims`` principal directions (32 by
default; the directions are fitted on at most 20,000 rows), which brings 20k points to
about 15 seconds. Above ``cap`` points, HDBSCAN is fitted on a seeded sample of ``cap``
of them and the rest are assigned to the fitted groups by approximate prediction
(``hdbscan.approximate_predict``); points it leaves unassigned stay ungrouped.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cleanface.purify.analysis import l2_normalize

PCA_FIT_ROWS = 20_000


def components(num_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges ``a[i] -- b[i]``: int64 (num_nodes,).

    Component ids are numbered in the order of each component's lowest node, so the
    result depends only on the graph.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(num_nodes, num_nodes))
    _, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64)


def project(x: np.ndarray, dims: int, *, seed: int = 0) -> np.ndarray:
    """Normalised rows of ``x`` (n, D) projected on their top ``dims`` principal directions: float32 (n, min(dims, D))."""
    x = l2_normalize(x)
    if x.shape[1] <= dims:
        return x
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= PCA_FIT_ROWS else x[np.sort(rng.choice(len(x), PCA_FIT_ROWS, replace=False))]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return ((x - mean) @ vt[:dims].T).astype(np.float32)


def outlier_groups(
    embeddings: np.ndarray, *, min_cluster_size: int = 5, cap: int = 20_000, dims: int = 32, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """HDBSCAN groups among ``embeddings`` (n, D), the dropped images.

    Returns
    -------
    groups : ndarray of shape (n,), int64
        Group id per row, -1 for no group. Groups are numbered by their lowest row.
    info : dict
        ``{"points", "fitted", "dims", "min_cluster_size", "predicted"}``: how many rows
        HDBSCAN was fitted on and how many were assigned by prediction.
    """
    import hdbscan

    n = len(embeddings)
    info = {"points": int(n), "fitted": 0, "predicted": 0, "dims": int(dims), "min_cluster_size": int(min_cluster_size), "cap": int(cap)}
    groups = np.full(n, -1, dtype=np.int64)
    if n < max(2, min_cluster_size):
        return groups, info
    y = project(embeddings, dims, seed=seed)
    sample = np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    clusterer = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", core_dist_n_jobs=1, prediction_data=n > cap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = np.full(n, -1, dtype=np.int64)
        raw[sample] = clusterer.fit_predict(y[sample])
        info["fitted"] = int(len(sample))
        if n > cap and raw.max() >= 0:
            rest = np.setdiff1d(np.arange(n), sample)
            predicted, _ = hdbscan.approximate_predict(clusterer, y[rest])
            raw[rest] = predicted
            info["predicted"] = int(len(rest))
    # renumber groups by their lowest row, for stable ids
    found = raw >= 0
    if found.any():
        ids, first = np.unique(raw[found], return_index=True)
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(ids))
        lookup = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        lookup[ids] = rank
        groups[found] = lookup[raw[found]]
    return groups, info
