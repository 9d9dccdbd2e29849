"""Non-private exact top-k over one shard's faiss index: a benchmark baseline, not product API.

A private index only answers through the DP mechanism (``pipeline.mechanism``); the benchmarks keep this
exact search to time faiss against numpy and to check that the stored faiss index agrees with the rows.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import faiss
import numpy as np

logger = logging.getLogger(__name__)
_BLAS_LOCK = threading.Lock()
_SEARCHERS: dict[int, faiss.Index] = {}


@contextlib.contextmanager
def _distance_path(num_queries: int) -> Iterator[None]:
    """Pick faiss's flat-search kernel for one call, then restore the global setting.

    faiss-cpu 1.15 ships ``distance_compute_blas_threshold = 128000`` and never takes the BLAS path for
    small batches: 64 queries at d = 512 ran 6-9x slower than one matrix product, while a single query is
    fastest on the SIMD scan (benchmarks/results/index.md). So: BLAS for batches, SIMD for one query.
    Results are the same exact top-k either way.
    """
    with _BLAS_LOCK:
        previous = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1 if num_queries > 1 else 2**30
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = previous


def _searcher(index: faiss.Index) -> faiss.Index:
    """The index itself, or its clone on all GPUs when faiss-gpu sees one (same results as the CPU index)."""
    key = id(index)
    if key not in _SEARCHERS:
        _SEARCHERS[key] = index
        if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
            try:
                _SEARCHERS[key] = faiss.index_cpu_to_all_gpus(index)
            except RuntimeError as err:  # an index type without a GPU version: stay on CPU
                logger.warning("faiss GPU clone failed (%s); searching on CPU", type(err).__name__)
    return _SEARCHERS[key]


def exact_search(shard, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` (scores, ids) of ``shard.faiss_index``, best first; missing slots -1/-inf."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if shard.num_records == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    with _distance_path(len(q)):
        scores, ids = _searcher(shard.faiss_index).search(q, k)
    return np.where(ids < 0, -np.inf, scores).astype(np.float32), ids.astype(np.int64)
