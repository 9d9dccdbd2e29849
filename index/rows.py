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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from index.errors import IndexInputError

if TYPE_CHECKING:
    import faiss

__all__ = ["MemoryShard", "RowSet", "bad_rows"]

UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed for a stored row (float32 round-off of a normalised embedding)
_CHUNK = 65_536


def bad_rows(embeddings: np.ndarray) -> int:
    """Number of rows that are not finite or whose L2 norm differs from 1 by more than ``UNIT_TOLERANCE``."""
    bad = 0
    for start in range(0, len(embeddings), _CHUNK):
        block = np.asarray(embeddings[start : start + _CHUNK], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(block), block, 0.0), axis=1)
        bad += int(np.sum(~finite | (np.abs(norms - 1.0) > UNIT_TOLERANCE)))
    return bad


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
        embeddings: ``(n, d)`` float32 C-contiguous rows (may be a read-only memory map; never copied whole).
        ids: ``(n,)`` int64 content ids, ``ids[i]`` labels row ``i``.
        quantizer: the public coarse quantizer of an ivf-flat index, or None for flat.
        nprobe: lists probed per query (ivf-flat only).
    """

    def __init__(
        self, embeddings: np.ndarray, ids: np.ndarray, *, quantizer: faiss.Index | None = None, nprobe: int = 1
    ) -> None:
        self._embeddings = embeddings
        self._ids = ids
        self.num_records = int(embeddings.shape[0])
        self.dim = int(embeddings.shape[1])
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
        """Exact inner products ``<rows[p], query>`` for ``positions`` (float32), without copying the rows."""
        import faiss

        pos, vector = self._positions(positions), self._query(query)
        scores = np.empty(pos.size, dtype=np.float32)
        if pos.size:
            faiss.fvec_inner_products_by_idx(
                faiss.swig_ptr(scores), faiss.swig_ptr(vector), faiss.swig_ptr(self._embeddings),
                faiss.swig_ptr(pos), self.dim, 1, pos.size,
            )  # fmt: skip
        return scores

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """A float32 ``(m, d)`` copy of the rows at ``positions``."""
        return np.array(self._embeddings[self._positions(positions)], dtype=np.float32)

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


class MemoryShard(RowSet):
    """In-memory rows with the shard primitives (stand-in data for audits, tests and benchmarks).

    Args:
        embeddings: ``(n, d)`` unit rows (checked finite and unit-norm).
        ids: content ids (default ``0 .. n-1``).
        quantizer: a PUBLIC coarse quantizer for ivf-flat behaviour (None: flat).
        nprobe: lists probed per query.

    Raises:
        IndexInputError: not a 2-D float array, ids of the wrong shape, or rows not finite / not unit norm.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: np.ndarray | None = None,
        *,
        quantizer: faiss.Index | None = None,
        nprobe: int = 1,
    ) -> None:
        rows = np.ascontiguousarray(embeddings, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise IndexInputError(f"embeddings must be a 2-D (n, d) array; found shape {rows.shape}")
        labels = np.arange(len(rows), dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
        if labels.shape != (len(rows),):
            raise IndexInputError(f"ids must have shape ({len(rows)},); found {labels.shape}")
        if bad_rows(rows):
            raise IndexInputError("embeddings must be finite unit-norm rows; normalise them first")
        super().__init__(rows, labels, quantizer=quantizer, nprobe=nprobe)
