"""The audit's neighbouring pair: a dataset D, a canary far from it, and D ∪ {canary}.

The DP retrieval release is r = (1/k) Σ top-k of a Poisson subsample + N(0, σ² I). Adding the canary c
and querying with c itself puts c first whenever it is sampled (score 1), so the mean shifts by
(c − e_(k)) / k, where e_(k) is the k-th neighbour it pushes out. ‖c − e_(k)‖ grows as ⟨c, e_(k)⟩ falls,
up to the sensitivity bound 2/k when e_(k) = −c. The canary is therefore chosen to make the typical
k-th neighbour score as low as possible: among a few candidate unit vectors (the antipode of the data
mean; a direction orthogonal to the data's span when there is one), the one whose score at rank
⌈k/q⌉ (where the k-th sampled neighbour sits on average) is lowest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import PipelineInputError

if TYPE_CHECKING:
    from index import MemoryShard

__all__ = ["Canary", "choose_canary", "flat_index", "unit_rows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    """A canary record and the attack direction that best separates the two worlds.

    Attributes:
        vector: the canary's unit embedding; the audit's query is this vector.
        direction: unit vector u; the attack's statistic is ⟨release, u⟩.
        kind: how the canary was built ("antipode-of-mean" or "orthogonal-to-data").
    """

    vector: np.ndarray
    direction: np.ndarray
    kind: str


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Validate an (n, d) embedding matrix and return it as float32 rows of unit L2 norm.

    Raises:
        PipelineInputError: not 2-D, empty, non-finite values, or a zero row.
    """
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise PipelineInputError(
            f"audit embeddings must be a non-empty (n, d) matrix with d >= 2; found shape {array.shape}; "
            "pass one row per record"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise PipelineInputError(f"audit embeddings must be numeric; found dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise PipelineInputError("audit embeddings contain NaN or infinite values; re-encode the corpus")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms <= 1e-12).any():
        raise PipelineInputError(
            "audit embeddings contain an all-zero row; remove it or re-encode the corpus"
        )
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def flat_index(vectors: np.ndarray) -> MemoryShard:
    """Rows with ids 0..n-1 and the flat shard primitives the mechanism uses (``index.MemoryShard``)."""
    from index import MemoryShard  # late, like the mechanism: loading the audit module stays light

    return MemoryShard(vectors)


def choose_canary(data: np.ndarray, *, k: int, q: float, rng: np.random.Generator) -> Canary:
    """Pick the candidate canary that is hardest to hide (see the module docstring).

    Args:
        data: (n, d) unit rows of D.
        k: neighbours per query.
        q: Poisson sampling rate.
        rng: attack-side randomness (only draws the orthogonal candidate).

    Returns:
        The canary and the attack direction u = normalise(c − m), where m is the mean of the data
        rows ranked 1..⌈k/q⌉ by ⟨c, ·⟩ (those the canary displaces on average).
    """
    n, d = data.shape
    rank = min(n, max(1, math.ceil(k / q)))
    candidates: list[tuple[str, np.ndarray]] = []
    mean = data.astype(np.float64).mean(axis=0)
    if np.linalg.norm(mean) > 1e-6:
        candidates.append(("antipode-of-mean", -mean / np.linalg.norm(mean)))
    orthogonal = _orthogonal_direction(data, rng)
    if orthogonal is not None:
        candidates.append(("orthogonal-to-data", orthogonal))
    if not candidates:  # data with zero mean and full span: any direction is as good as another
        vector = rng.standard_normal(d)
        candidates.append(("random", vector / np.linalg.norm(vector)))

    def kth_score(vector: np.ndarray) -> float:
        scores = data.astype(np.float64) @ vector
        return float(np.partition(-scores, rank - 1)[rank - 1] * -1.0)

    kind, vector = min(candidates, key=lambda item: kth_score(item[1]))
    scores = data.astype(np.float64) @ vector
    displaced = data[np.argsort(-scores, kind="stable")[:rank]].astype(np.float64).mean(axis=0)
    direction = vector - displaced
    direction /= np.linalg.norm(direction)
    return Canary(vector=vector.astype(np.float32), direction=direction.astype(np.float32), kind=kind)


def _orthogonal_direction(data: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A unit vector orthogonal to every row, or None when the rows span the whole space."""
    n, d = data.shape
    if n >= d:
        return None
    basis, _ = np.linalg.qr(data.astype(np.float64).T)  # (d, n) orthonormal basis of the row span
    vector = rng.standard_normal(d)
    vector -= basis @ (basis.T @ vector)
    norm = np.linalg.norm(vector)
    return None if norm < 1e-9 else vector / norm
