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
(the rule of ``hdbscan.approximate_predict``, see :func:`approximate_labels`); points
it leaves unassigned stay ungrouped.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cleanface.purify._threads import parallel_map, single_threaded_blas
from cleanface.purify.analysis import l2_normalize

PCA_FIT_ROWS = 20_000
KNN_BLOCK = 512  # query rows per block of the exact nearest-neighbour search


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
    with single_threaded_blas():  # a threaded SVD of this small matrix mostly waits for its threads on shared cores
        _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
        return ((x - mean) @ vt[:dims].T).astype(np.float32)


def nearest_neighbours(queries: np.ndarray, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact euclidean ``k`` nearest ``points`` of each query: (distances float64 (Q, k), indices (Q, k)), nearest first.

    Blocks of queries go against all points in threads: a float32 matrix product picks
    ``2 k`` candidates, whose distances are then computed directly in float64 (the
    float32 rounding would have to reorder the k-th and the 2k-th neighbour to matter).
    Ties go to the lower index.
    """
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    k = min(k, len(p))
    m = min(2 * k, len(p))
    p32 = p.astype(np.float32)
    p_sq = np.einsum("ij,ij->i", p32, p32)

    def block(s: int) -> tuple[np.ndarray, np.ndarray]:
        x = q[s : s + KNN_BLOCK]
        rank = x.astype(np.float32) @ p32.T  # squared distance less |x|^2, which is the same along a row
        rank *= -2.0
        rank += p_sq
        cand = np.argpartition(rank, m - 1, axis=1)[:, :m] if m < len(p) else np.broadcast_to(np.arange(len(p)), rank.shape)
        diff = x[:, None, :] - p[cand]
        dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.lexsort((cand, dist), axis=1)[:, :k]
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(cand, order, axis=1)

    if len(q) == 0:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    parts = parallel_map(block, range(0, len(q), KNN_BLOCK))
    return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])


def approximate_labels(clusterer, fitted: np.ndarray, points: np.ndarray, min_samples: int) -> np.ndarray:
    """Labels of new ``points`` in a fitted HDBSCAN clustering: int64 (n,), -1 for none.

    The rule of ``hdbscan.approximate_predict``, all points at once: a point joins its
    nearest fitted neighbour by mutual reachability distance (among its ``2 *
    min_samples`` nearest) at lambda = 1 / that distance, and climbs the condensed tree
    from the neighbour's cluster while the parent cluster persists at that lambda; it
    takes the label of the selected cluster it ends in. The library does the same one
    point at a time in Python, scanning the whole tree for each point, and finds
    neighbours with a k-d tree that prunes little at 32 dimensions. Reads the condensed
    tree through hdbscan's own (private) ``_raw_tree`` and ``_select_clusters``, as its
    prediction code does; :func:`outlier_groups` falls back to the library when they
    are missing.

    Parameters
    ----------
    clusterer : hdbscan.HDBSCAN
        Fitted on ``fitted`` (m, dims).
    points : ndarray (n, dims)
    min_samples : int
        The ``min_samples`` of the fit.
    """
    n = len(points)
    labels = np.full(n, -1, dtype=np.int64)
    condensed = clusterer.condensed_tree_
    raw = condensed._raw_tree
    cluster_tree = raw[raw["child_size"] > 1]
    if n == 0 or len(cluster_tree) == 0:
        return labels
    size = int(max(raw["parent"].max(), raw["child"].max())) + 1
    # selected clusters and every cluster below one take its label (as hdbscan's PredictionData)
    label_of = np.full(size, -1, dtype=np.int64)
    for label, cluster in enumerate(sorted(int(c) for c in condensed._select_clusters())):
        below = [cluster]
        while below:
            label_of[below] = label
            below = cluster_tree["child"][np.isin(cluster_tree["parent"], below)].tolist()
    parent = np.full(size, -1, dtype=np.int64)
    lam = np.full(size, np.nan)
    first_row = np.arange(len(raw))[::-1]  # rows written last to first, so the first row of a child wins
    parent[raw["child"][first_row]] = raw["parent"][first_row]
    lam[raw["child"][first_row]] = raw["lambda_val"][first_row]
    is_cluster_child = np.zeros(size, dtype=bool)
    is_cluster_child[cluster_tree["child"]] = True
    root = int(cluster_tree["parent"].min())

    core = nearest_neighbours(fitted, fitted, min_samples)[0][:, -1]
    dist, idx = nearest_neighbours(points, fitted, 2 * min_samples)
    mutual = np.maximum(np.maximum(core[idx], dist[:, min(min_samples, dist.shape[1] - 1)][:, None]), dist)
    pick = np.argmin(mutual, axis=1)
    rows = np.arange(n)
    neighbour = idx[rows, pick]
    reach = mutual[rows, pick]
    with np.errstate(divide="ignore"):
        point_lambda = np.where(reach > 0.0, 1.0 / reach, np.finfo(np.float64).max)
    cluster = parent[neighbour]
    climbing = lam[neighbour] > point_lambda
    while True:
        c = cluster[climbing]
        up = (c > root) & is_cluster_child[np.maximum(c, 0)]
        up[up] = lam[c[up]] >= point_lambda[climbing][up]
        if not up.any():
            break
        moving = np.flatnonzero(climbing)[up]
        cluster[moving] = parent[cluster[moving]]
        climbing[:] = False
        climbing[moving] = True
    labels[:] = label_of[cluster]
    return labels


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
    clusterer = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", core_dist_n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = np.full(n, -1, dtype=np.int64)
        raw[sample] = clusterer.fit_predict(y[sample])
        info["fitted"] = int(len(sample))
        if n > cap and raw.max() >= 0:
            rest = np.setdiff1d(np.arange(n), sample)
            min_samples = clusterer.min_samples or clusterer.min_cluster_size
            try:
                raw[rest] = approximate_labels(clusterer, y[sample], y[rest], min_samples)
            except (AttributeError, KeyError, ValueError):  # another hdbscan's internals: its own, slower prediction
                clusterer.generate_prediction_data()
                raw[rest] = hdbscan.approximate_predict(clusterer, y[rest])[0]
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
