"""The near-duplicate search with its inverted lists spread over the workers of a cluster.

On one machine the near-duplicate rule builds one IVF index of every sample (float16 lists,
10 GB at 10M images of 512-d) and searches it with the samples themselves
(:func:`cleanface.purify.neighbours.near_duplicates`). On a cluster no process holds
that index: the process that decides trains the same coarse quantizer (same sample of rows,
same seed), finds each sample's ``nprobe`` nearest cells as a pass of the runner, and sends
groups of cells to the workers. A worker builds the lists of its cells from the
memory-mapped embeddings (the unit rows stored as float16, as the index stores them),
scores every sample that probes those cells against them (one matrix product per cell,
the best ``k`` per sample and cell) and returns those slots; the slots of all cells are
merged exactly as the one-machine search merges them. So the candidates, and after the
float32 re-scoring the pairs and their cosines, are those of the one-machine search
(``tests/purify/test_shards.py`` compares them).
"""

from __future__ import annotations

import os

import faiss
import numpy as np

from cleanface.purify import _faiss, shards
from cleanface.purify.neighbours import DUP_NEIGHBOURS, pairs_from_neighbours

CELL_GROUP_WORK = 2e9  # multiply-adds of the cell scoring per task (about a second of one core)


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


def _cells_block(lo: int, hi: int, a: dict, k: int, nprobe: int, floor: float) -> tuple[np.ndarray, ...]:
    """Score the cells ``a["cells"][lo:hi]``: the best ``k`` members of each cell for every sample probing it, as slots."""
    out_rows, out_cols, out_scores, out_ids = [], [], [], []
    for c, start, stop in np.asarray(a["cells"][lo:hi]):
        entries = np.asarray(a["order"][start:stop])  # (row, probe rank) of every sample probing cell c, by row
        rows, ranks = entries // nprobe, entries % nprobe
        members = rows[ranks == 0]
        if not len(members):
            continue
        vectors = _stored(a["embeddings"], members)
        queries = _stored(a["embeddings"], rows)
        gram = queries @ vectors.T
        hit = gram.max(axis=1) >= floor
        if not hit.any():
            continue
        gram, rows, ranks = gram[hit], rows[hit], ranks[hit]
        kk = min(k, len(members))
        top = _faiss.top_columns(gram, kk, ordered=False)
        out_rows.append(np.repeat(rows, kk))
        out_cols.append((ranks[:, None] * k + np.arange(kk)).ravel())
        out_scores.append(np.take_along_axis(gram, top, axis=1).ravel())
        out_ids.append(members[top].ravel())
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_scores), np.concatenate(out_ids)


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
    """:func:`cleanface.purify.neighbours.near_duplicates` of an IVF float16 index, its lists built and scored on the runner's workers."""
    n, d = embeddings.shape
    runner = shards.current()
    centroids, nprobe = trained_centroids(embeddings, factory, params, seed)
    probes = np.concatenate(list(runner.imap(_probe_block, shards.blocks(n, _faiss.SEARCH_CHUNK * 4),
                                             {"embeddings": embeddings, "centroids": centroids}, nprobe=nprobe)))
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")  # by cell, then row, then probe rank
    cells, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    members = np.bincount(probes[:, 0], minlength=len(centroids))[cells]
    k = max(1, min(DUP_NEIGHBOURS + 1, n))
    floor = dup_cos - _faiss.FP16_COS_ERROR
    slot_scores = np.full((n, nprobe * k), -np.inf, dtype=np.float32)
    slot_ids = np.full((n, nprobe * k), -1, dtype=np.int64)
    groups = cell_tasks(cells, starts, starts + counts, members, d)
    table = np.concatenate(groups) if groups else np.zeros((0, 3), np.int64)
    spans = np.cumsum([0] + [len(g) for g in groups])
    arrays = {"embeddings": embeddings, "order": order, "cells": table}
    for rows, cols, scores, ids in runner.imap(_cells_block, list(zip(spans[:-1], spans[1:])), arrays, k=k, nprobe=nprobe, floor=floor):
        slot_scores[rows, cols] = scores
        slot_ids[rows, cols] = ids
    pick = np.argsort(-slot_scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(slot_scores, pick, axis=1), np.take_along_axis(slot_ids, pick, axis=1)
    low = ~(scores >= floor)
    scores[low], ids[low] = -np.inf, -1
    return pairs_from_neighbours(embeddings, finite, scores, ids, floor, dup_cos, rescore=True)


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
