"""The near-duplicate search cell by cell, from the memory-mapped embeddings, on any runner.

Purify's near-duplicate rule asks for every pair of images at cosine >= ``dup_cos`` among
the IVF cells each image probes (:func:`cleanface.purify.neighbours.near_duplicates`, whose
candidates these are). No process builds the index of all samples (10 GB of float16 lists at
10M images of 512-d): the process that decides trains the coarse quantizer
(:func:`cleanface.purify._faiss.train_quantizer`, same rows, same seed), finds each sample's
``nprobe`` nearest cells as a pass of the runner, and hands groups of cells to the runner
(:mod:`cleanface.purify.shards`: threads of this process, or the workers of a cluster). A
block reads the members of its cells and the samples probing them from the memory-mapped
embeddings, as the index would store them (unit rows rounded to float16), and returns each
probing sample's pairs scoring at least the float16 floor; the pairs of all cells are ranked
per sample, its best ``k`` kept, and re-scored in float32.

Most of the work of a cell used to be its full matrix of inner products, nearly all of them far
below the floor. A cell is now scored first in a ``BOUND_DIMENSIONS``-dimensional projection
(the leading directions of a sample of the embeddings, :func:`projection_basis`): for unit
rows ``x``, ``y`` and an orthonormal basis ``B``, ``x . y = xB . yB + r_x . r_y <= xB . yB +
|r_x| |r_y|`` with ``r`` the part outside the basis, so a pair whose bound is below the floor
cannot reach it and is skipped exactly; only the pairs above it are scored in full. The
candidates, and so the pairs and their cosines, are those of the full product
(``tests/purify/test_shards.py`` and ``tests/purify/test_duplicates.py`` compare them).
"""

from __future__ import annotations

import os

import faiss
import numpy as np

from cleanface.purify import _faiss, shards
from cleanface.purify.neighbours import DUP_NEIGHBOURS, pairs_from_candidates

CELL_GROUP_WORK = 2e9 / 8  # multiply-adds of the bound products per task (a second or so of one core, the full products of the pairs above included)
BOUND_DIMENSIONS = 64  # of the projection that bounds a cell's inner products (module docstring)
BOUND_SLACK = 1e-4  # below the floor, for the float32 rounding of the bound (about 1e-6)
BASIS_SAMPLE = 20_000  # rows whose leading directions make the projection


def trained_centroids(embeddings: np.ndarray, factory: str, params: str, seed: int) -> tuple[np.ndarray, int]:
    """The coarse quantizer :func:`cleanface.purify._faiss.build_index` trains for ``factory``: centroids (nlist, d) and nprobe."""
    index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.by_residual = False
    _faiss.train_quantizer(index, embeddings, seed)
    nprobe = int(params.split("=")[1]) if params else 1
    return ivf.quantizer.reconstruct_n(0, ivf.nlist), max(1, min(nprobe, ivf.nlist))


def _probe_block(lo: int, hi: int, a: dict, nprobe: int) -> np.ndarray:
    return _faiss.nearest_cells(_faiss._clean(a["embeddings"][lo:hi]), np.asarray(a["centroids"]), nprobe)


def _stored(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The vectors an IVF float16 index stores for ``rows``: unit float32 rows rounded to float16, back in float32."""
    order = np.argsort(rows, kind="stable")  # read the memory map in row order
    out = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    out[order] = _faiss._clean(embeddings[rows[order]]).astype(np.float16).astype(np.float32)
    return out


def projection_basis(embeddings: np.ndarray, seed: int, dims: int = 0) -> np.ndarray:
    """(D, dims) orthonormal columns: the leading right singular vectors of a seeded sample of the stored rows.

    ``dims`` 0 means ``BOUND_DIMENSIONS`` (at most D). The bound of the module docstring holds
    for any orthonormal basis; the leading directions make it tight.
    """
    n, d = embeddings.shape
    dims = min(d, dims or BOUND_DIMENSIONS)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, BASIS_SAMPLE), replace=False))
    sample = _stored(embeddings, rows)
    sample = sample[np.isfinite(sample).all(axis=1)]
    basis = np.linalg.svd(sample.astype(np.float64), full_matrices=False)[2][:dims].T if len(sample) else np.eye(d)[:, :dims]
    return np.ascontiguousarray(basis, dtype=np.float32)


def bound_rows(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(B, dims + 1): each row's coordinates in ``basis`` and the norm of what lies outside it (so that a product of two such rows bounds ``x . y``)."""
    inside = x @ basis
    outside = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", inside, inside), 0.0))
    return np.concatenate([inside, outside[:, None]], axis=1)


def _cells_block(lo: int, hi: int, a: dict, nprobe: int, floor: float) -> tuple[np.ndarray, ...]:
    """Score the cells ``a["cells"][lo:hi]``: every (sample, member) pair of each cell scoring at least ``floor``.

    Returns ``(rows, ranks, scores, ids)``: the probing sample, the rank of the cell among its
    probes, the float16-stored inner product and the member; the sample itself included.
    """
    basis = np.asarray(a["basis"])
    out = []
    for c, start, stop in np.asarray(a["cells"][lo:hi]):
        entries = np.asarray(a["order"][start:stop])  # (row, probe rank) of every sample probing cell c, by row
        rows, ranks = entries // nprobe, entries % nprobe
        members = rows[ranks == 0]
        if not len(members):
            continue
        vectors = _stored(a["embeddings"], members)
        queries = _stored(a["embeddings"], rows)
        q, m = np.nonzero(bound_rows(queries, basis) @ bound_rows(vectors, basis).T >= floor - BOUND_SLACK)
        score = np.einsum("ij,ij->i", queries[q], vectors[m])
        keep = score >= floor
        out.append((rows[q[keep]], ranks[q[keep]], score[keep], members[m[keep]]))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return tuple(np.concatenate(parts) for parts in zip(*out))


def best_candidates(rows: np.ndarray, ranks: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample's ``k`` best candidates, by score (ties: nearer probe, then lower id): ``(rows, ids, scores)``."""
    order = np.lexsort((ids, ranks, -scores, rows))
    rows, ids, scores = rows[order], ids[order], scores[order]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows)  # 0 for each sample's best
    keep = place < k
    return rows[keep], ids[keep], scores[keep]


def cell_tasks(cells: np.ndarray, starts: np.ndarray, stops: np.ndarray, members: np.ndarray, dim: int) -> list[np.ndarray]:
    """Groups of cells of about :data:`CELL_GROUP_WORK` multiply-adds each: arrays of (cell, start, stop) rows."""
    work = (stops - starts).astype(np.float64) * members * dim
    bounds = np.searchsorted(np.cumsum(work), np.arange(CELL_GROUP_WORK, work.sum() + CELL_GROUP_WORK, CELL_GROUP_WORK), side="right")
    table = np.stack([cells, starts, stops], axis=1).astype(np.int64)
    groups, lo = [], 0
    for hi in np.unique(np.minimum(np.append(bounds, len(cells)), len(cells))):
        if hi > lo:
            groups.append(table[lo:hi])
            lo = hi
    return groups


def sharded_near_duplicates(embeddings: np.ndarray, finite: np.ndarray, dup_cos: float, factory: str, params: str, seed: int,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cleanface.purify.neighbours.near_duplicates` of an IVF float16 index, cell by cell on the runner in effect (module docstring)."""
    n, d = embeddings.shape
    runner = shards.current()
    centroids, nprobe = trained_centroids(embeddings, factory, params, seed)
    probes = np.concatenate(list(runner.imap(_probe_block, shards.blocks(n, _faiss.SEARCH_CHUNK * 4),
                                             {"embeddings": embeddings, "centroids": centroids}, nprobe=nprobe)))
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")  # by cell, then row, then probe rank
    del flat
    cells, starts, counts = np.unique(probes.ravel()[order], return_index=True, return_counts=True)
    members = np.bincount(probes[:, 0], minlength=len(centroids))[cells]
    del probes
    floor = dup_cos - _faiss.FP16_COS_ERROR
    groups = cell_tasks(cells, starts, starts + counts, members, BOUND_DIMENSIONS + 1)
    table = np.concatenate(groups) if groups else np.zeros((0, 3), np.int64)
    spans = np.cumsum([0] + [len(g) for g in groups])
    arrays = {"embeddings": embeddings, "order": order, "cells": table, "basis": projection_basis(embeddings, seed)}
    found = list(runner.imap(_cells_block, list(zip(spans[:-1], spans[1:])), arrays, nprobe=nprobe, floor=floor))
    del order
    rows, ranks, scores, ids = (np.concatenate(parts) for parts in zip(*found)) if found else (np.zeros(0, np.int64),) * 4
    rows, ids, scores = best_candidates(rows, ranks, scores.astype(np.float32), ids, max(1, min(DUP_NEIGHBOURS + 1, n)))
    return pairs_from_candidates(embeddings, finite, rows, ids, scores, floor, dup_cos, rescore=True)


_INDEXES: dict[str, _faiss.BuiltIndex] = {}


def _worker_index(path: str, factory: str, params: str) -> _faiss.BuiltIndex:
    """The index written at ``path``, read once per worker process."""
    built = _INDEXES.get(path)
    if built is None:
        _INDEXES.clear()  # one index at a time: a pass's index replaces the last one
        built = _INDEXES[path] = _faiss.BuiltIndex(faiss.read_index(path), factory, params, None)
    return built


def _search_block(lo: int, hi: int, a: dict, index_path: str, factory: str, params: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = np.asarray(a["embeddings"][np.asarray(a["rows"][lo:hi])])
    return _faiss.search(_worker_index(index_path, factory, params), queries, k)


def search_on_workers(built: _faiss.BuiltIndex, embeddings: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cleanface.purify._faiss.search` of ``embeddings[rows]`` on the runner's workers: each reads ``built`` from a file once.

    The queries go in blocks of the one-machine search's own chunk size, so each block is
    searched exactly as there; the results are those of one machine.
    """
    runner = shards.current()
    path = runner.spill_path("index.faiss")
    faiss.write_index(built.index, path)
    try:
        step = _faiss.SEARCH_CHUNK if _faiss._ivf_of(built.index) is None else _faiss.IVF_QUERY_CHUNK
        parts = list(runner.imap(_search_block, shards.blocks(len(rows), step), {"embeddings": embeddings, "rows": np.asarray(rows)},
                                 index_path=path, factory=built.factory, params=built.params, k=k))
    finally:
        os.remove(path)
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
