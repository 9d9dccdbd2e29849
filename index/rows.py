"""Rows of one shard and the four primitives the DP mechanism is allowed to use on them.

Invariant: row ``i`` belongs to ``ids[i]``. The mechanism (``pipeline/mechanism.py``) draws Poisson positions
over ``0 .. num_records-1`` and then only calls :meth:`RowSet.restrict`, :meth:`RowSet.score`,
:meth:`RowSet.ids_at` and :meth:`RowSet.rows`; it never walks faiss internals and never maps ids back to rows.

* flat: ``restrict`` is the identity; ``score`` is the exact inner product of the kept rows.
* ivf-flat: every row's IVF list is assigned by the PUBLIC quantizer (a function of that row alone), and
  ``restrict`` keeps the positions whose list is among the ``nprobe`` lists probed for the query (a function of
  the query and public data alone). Scores of the kept rows are then exactly the flat scores, so the same
  top-k with the same id tie-break applies (issue 9).

:class:`MemoryShard` exposes the same primitives over in-memory arrays (stand-in data for audits, tests and
benchmarks).

Storage (:mod:`index.storage`): the rows may be stored as float32, float16 or int8 (fixed range). ``score`` is
then the float32 query · the decoded row (cast in blocks of ``_BLOCK`` rows and scored by the same faiss kernel
as float32 rows, so a row's score does not depend on which block or thread scored it; int8 as
``(query/127) · code``, equal up to float32 rounding), ``rows`` returns the decoded float32 rows, and the exact
top-k of the mechanism is taken on these scores.

Threads: ``score`` splits the (sorted) positions into contiguous chunks (``_CHUNKS_PER_THREAD`` per thread) that
the calling thread and ``threads - 1`` pool threads take from a shared counter (faiss, numpy and torch release the
GIL); the calling thread then scores any chunk a helper has not finished, so it never waits for a helper. Every
score is computed by the same per-row kernel whichever thread or chunk computes it, so the result is bit-identical
to one thread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from index import storage as formats
from index.errors import IndexInputError

if TYPE_CHECKING:
    import faiss

__all__ = ["MemoryShard", "RowSet", "bad_rows", "check_threads"]

UNIT_TOLERANCE = formats.UNIT_TOLERANCE  # |norm - 1| allowed for a float32 row (round-off of a normalised embedding)
_CHUNK = 65_536
_BLOCK = 256  # rows decoded at once when scoring a compressed shard (~0.8 MB of float32 at d = 768: stays in cache)
_MIN_PER_THREAD = 256  # fewer kept rows per thread than this are scored in one thread (dispatch would dominate)
_CHUNKS_PER_THREAD = 4  # chunks per scoring thread, taken from a shared counter (load balance on a busy machine)


def bad_rows(embeddings: np.ndarray, storage: str = formats.DEFAULT) -> int:
    """Number of rows that are not finite or whose L2 norm differs from 1 by more than the format's tolerance.

    ``embeddings`` holds float rows (checked with :func:`index.storage.unit_tolerance` of ``storage``), or the
    stored float16/int8 values of that format (decoded first).
    """
    tolerance = formats.unit_tolerance(storage, int(embeddings.shape[1]) if embeddings.ndim == 2 else 1)
    bad = 0
    for start in range(0, len(embeddings), _CHUNK):
        block = np.asarray(embeddings[start : start + _CHUNK])
        if block.dtype == np.int8:
            block = formats.decode(block)
        block = block.astype(np.float64)
        finite = np.isfinite(block).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(block), block, 0.0), axis=1)
        bad += int(np.sum(~finite | (np.abs(norms - 1.0) > tolerance)))
    return bad


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One process-wide pool per thread count (created on first use)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dprdm-score")


def check_threads(threads: int | None) -> int:
    """Scoring threads per query: ``None`` means 1; else an integer ≥ 1 (one-line :class:`IndexInputError`)."""
    if threads is None:
        return 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise IndexInputError(f"threads must be an integer >= 1; found {threads!r}; pass e.g. --threads 2")
    return int(threads)


def _assign_lists(quantizer: faiss.Index, embeddings: np.ndarray) -> np.ndarray:
    """IVF list of every row, as the public quantizer assigns it (its nearest centroid)."""
    lists = np.empty(len(embeddings), dtype=np.int64)
    for start in range(0, len(embeddings), _CHUNK):
        block = np.ascontiguousarray(embeddings[start : start + _CHUNK], dtype=np.float32)
        _, nearest = quantizer.search(block, 1)
        lists[start : start + len(block)] = nearest[:, 0]
    return lists


class RowSet:
    """Row-indexed view of unit embeddings with exact scoring and (for IVF) public-quantizer restriction.

    Args:
        embeddings: ``(n, d)`` C-contiguous stored rows: float32, or the float16/int8 values of
            :mod:`index.storage` (may be a read-only memory map; never copied whole).
        ids: ``(n,)`` int64 content ids, ``ids[i]`` labels row ``i``.
        quantizer: the public coarse quantizer of an ivf-flat index, or None for flat (float32 rows only).
        nprobe: lists probed per query (ivf-flat only).
        threads: threads scoring one query's rows (default 1; the result does not depend on it).

    Attributes:
        storage: ``float32``, ``float16`` or ``int8`` (from the dtype of ``embeddings``).
        threads: scoring threads per query (settable).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: np.ndarray,
        *,
        quantizer: faiss.Index | None = None,
        nprobe: int = 1,
        threads: int | None = None,
    ) -> None:
        self._embeddings = embeddings
        self._ids = ids
        self.num_records = int(embeddings.shape[0])
        self.dim = int(embeddings.shape[1])
        self.storage = {np.dtype(np.float16): "float16", np.dtype(np.int8): "int8"}.get(embeddings.dtype, "float32")
        self.threads = check_threads(threads)
        self._quantizer = quantizer
        self._nprobe = max(1, int(nprobe))
        self._lists = _assign_lists(quantizer, embeddings) if quantizer is not None else None

    def _positions(self, positions: np.ndarray) -> np.ndarray:
        pos = np.ascontiguousarray(np.asarray(positions).reshape(-1), dtype=np.int64)
        if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= self.num_records):
            raise IndexInputError(f"row positions must lie in [0, {self.num_records}); pass positions of this shard")
        return pos

    def _query(self, query: np.ndarray) -> np.ndarray:
        vector = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(-1))
        if vector.shape != (self.dim,):
            raise IndexInputError(f"query has dimension {vector.size}, the shard has {self.dim}; use the index's encoder")
        return vector

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact inner products ``<decoded rows[p], query>`` for ``positions`` (float32), in ``threads`` threads.

        Float32 rows are never copied; compressed rows are decoded ``_BLOCK`` at a time. Bit-identical for any
        ``threads``: each score comes from the same per-row kernel.
        """
        pos, vector = self._positions(positions), self._query(query)
        scores = np.empty(pos.size, dtype=np.float32)
        helpers = min(self.threads, pos.size // _MIN_PER_THREAD) - 1
        if helpers < 1:
            self._score_into(vector, pos, scores)
            return scores
        # Contiguous chunks taken from a shared counter by the calling thread and its helpers. Each chunk is scored
        # into a private buffer and published once, under a lock; when the counter runs out, the calling thread
        # scores every chunk still unpublished itself. So a query never waits for a helper that a loaded machine
        # has not scheduled (it finishes in about one thread's time), and a late helper's result is discarded.
        bounds = np.linspace(0, pos.size, _CHUNKS_PER_THREAD * (helpers + 1) + 1).astype(np.int64)
        chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        taken, lock, published = itertools.count(), threading.Lock(), [False] * len(chunks)

        def run(number: int) -> None:
            a, b = chunks[number]
            part = np.empty(b - a, dtype=np.float32)
            self._score_into(vector, pos[a:b], part)
            with lock:
                if not published[number]:
                    scores[a:b] = part
                    published[number] = True

        def helper() -> None:
            with contextlib.suppress(Exception):  # a chunk a helper fails on is scored again by the caller
                while (number := next(taken)) < len(chunks):
                    run(number)

        pool = _pool(self.threads - 1)
        for _ in range(helpers):
            pool.submit(helper)
        while (number := next(taken)) < len(chunks):
            run(number)
        for number in range(len(chunks)):
            with lock:
                done = published[number]
            if not done:
                run(number)  # still with a helper (or failed there): score it here rather than wait
        return scores

    def _score_into(self, vector: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """``out[j] = <decoded row pos[j], vector>`` (one thread; ``pos`` and ``out`` contiguous)."""
        if self.storage == "float32":
            _inner_products(out, vector, self._embeddings, pos)
            return
        codes, block, local = _scratch(self._embeddings.dtype, self.dim)
        scaled = np.multiply(vector, np.float32(formats.code_scale(codes.dtype)), dtype=np.float32)  # int8: q/127
        for start in range(0, pos.size, _BLOCK):
            chosen = pos[start : start + _BLOCK]
            m = chosen.size
            np.take(self._embeddings, chosen, axis=0, out=codes[:m])
            formats.cast_into(codes[:m], block[:m])
            _inner_products(out[start : start + m], scaled, block[:m], local[:m])

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """A float32 ``(m, d)`` copy of the (decoded) rows at ``positions``."""
        return formats.decode(np.asarray(self._embeddings[self._positions(positions)]))

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The int64 content ids of the rows at ``positions`` (a copy)."""
        return np.array(self._ids[self._positions(positions)], dtype=np.int64)

    def restrict(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The positions a search for ``query`` may see: all of them (flat), or those in the probed IVF lists."""
        pos = self._positions(positions)
        if self._lists is None or pos.size == 0:
            return pos
        _, probed = self._quantizer.search(self._query(query)[None, :], self._nprobe)
        return pos[np.isin(self._lists[pos], probed[0][probed[0] >= 0])]


_SCRATCH = threading.local()


def _scratch(dtype: np.dtype, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's reusable ``_BLOCK``-row buffers (stored values, float32 rows, local positions).

    Reused across queries: a fresh ~1 MB buffer per call would be page-faulted in again every time (glibc returns
    large freed blocks to the system), which cost more than the scoring itself in a helper thread.
    """
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (np.dtype(dtype).str, int(dim))
    if key not in cache:
        cache[key] = (
            np.empty((_BLOCK, dim), dtype=dtype),
            np.empty((_BLOCK, dim), dtype=np.float32),
            np.arange(_BLOCK, dtype=np.int64),
        )
    return cache[key]


def _inner_products(out: np.ndarray, vector: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> None:
    """``out[j] = <rows[positions[j]], vector>`` by faiss's per-row kernel (float32, all arrays C-contiguous).

    The arrays are named arguments here, so they stay alive while faiss reads them through raw pointers.
    """
    import faiss

    if positions.size:
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(out), faiss.swig_ptr(vector), faiss.swig_ptr(rows), faiss.swig_ptr(positions),
            int(vector.size), 1, int(positions.size),
        )  # fmt: skip


class MemoryShard(RowSet):
    """In-memory rows with the shard primitives (stand-in data for audits, tests and benchmarks).

    Args:
        embeddings: ``(n, d)`` unit rows (checked finite and unit-norm).
        ids: content ids (default ``0 .. n-1``).
        quantizer: a PUBLIC coarse quantizer for ivf-flat behaviour (None: flat).
        nprobe: lists probed per query.
        storage: ``float32`` (default), ``float16`` or ``int8``: the rows are kept in that format
            (:mod:`index.storage`), as a shard created with ``--storage`` keeps them.
        threads: threads scoring one query's rows (default 1).

    Raises:
        IndexInputError: not a 2-D float array, ids of the wrong shape, rows not finite / not unit norm, an
            unknown storage, or ``storage`` with a quantizer (ivf-flat keeps float32 rows).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: np.ndarray | None = None,
        *,
        quantizer: faiss.Index | None = None,
        nprobe: int = 1,
        storage: str = formats.DEFAULT,
        threads: int | None = None,
    ) -> None:
        rows = np.ascontiguousarray(embeddings, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise IndexInputError(f"embeddings must be a 2-D (n, d) array; found shape {rows.shape}")
        labels = np.arange(len(rows), dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
        if labels.shape != (len(rows),):
            raise IndexInputError(f"ids must have shape ({len(rows)},); found {labels.shape}")
        if bad_rows(rows):
            raise IndexInputError("embeddings must be finite unit-norm rows; normalise them first")
        formats.check_storage(storage)
        if quantizer is not None and storage != formats.DEFAULT:
            raise IndexInputError(f"ivf-flat keeps float32 rows; found storage {storage!r}; drop storage or the quantizer")
        super().__init__(formats.encode(rows, storage), labels, quantizer=quantizer, nprobe=nprobe, threads=threads)
