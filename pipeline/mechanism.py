"""The DP-RDM retrieval mechanism as small pure functions: Poisson subsample → top-k → mean → Gaussian noise.

Mechanism (one private query, ``../shared/notes/dp-rdm.md`` §1.2 and §7):

1. :func:`poisson_subsample` keeps every record independently with probability ``q``, fresh per query;
2. :func:`subsample_topk` scores *only* the kept records against the unit query and takes the ``k`` best
   (ties broken by the smaller id); it never looks at a record outside the sample;
3. :func:`aggregate` returns ``(1/k) · Σ`` of the ≤ k accepted unit embeddings, a missing neighbour counting
   as a zero vector;
4. :func:`privatize` adds ``N(0, σ² I_d)``.

Privacy: under add/remove-one adjacency, adding or removing one record changes the mean of step 3 by at most
``2/k`` in L2 norm (a new record can only displace the k-th neighbour; a missing neighbour is a zero vector,
never a reused record). Steps 1–4 are therefore the Poisson-subsampled Gaussian mechanism with noise multiplier
``z = σ / (2/k) = kσ/2``, accounted by ``accountant`` with dp-accounting's RDP accountant on
``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))``.

Randomness is always an argument. Production callers pass :func:`secure_rng` (seeded from ``secrets``; the seed
is never stored or logged); tests may pass a seeded generator. Noise is a floating-point Gaussian (accepted
residual risk, ``../shared/notes/accounting.md`` §6): the released vector only reaches users through the
decoder's images, never bit-exactly through the CLI.
"""

from __future__ import annotations

import math
import operator
import secrets
from typing import Protocol

import numpy as np

from pipeline.errors import PipelineInputError

__all__ = ["aggregate", "poisson_subsample", "privatize", "secure_rng", "subsample_topk"]

# Above this rate one uniform draw per record (a Bernoulli mask) is cheaper than one geometric gap per kept record.
_MASK_ABOVE_Q = 0.2
# How far a row norm may exceed 1 (float32 round-off of a normalised embedding) before it is an error.
_UNIT_TOLERANCE = 1e-3


def secure_rng() -> np.random.Generator:
    """Return a numpy generator seeded with 128 bits from the OS CSPRNG (``secrets``).

    Used for the Poisson subsample and the Gaussian noise of every private query. The seed lives only inside
    the generator: it is never returned, stored or logged.
    """
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def poisson_subsample(n: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """Draw the positions kept by a Poisson subsample of ``n`` records at rate ``q``, in increasing order.

    Every position is kept independently with probability ``q``. For ``q ≤ 0.2`` the kept positions are drawn
    directly in O(qn) as cumulative sums of ``Geometric(q)`` gaps (the gap before the next kept record of an
    i.i.d. Bernoulli(q) sequence is geometric); above that a Bernoulli mask over all ``n`` is cheaper.

    Args:
        n (`int`): number of records (positions ``0 .. n-1``).
        q (`float`): inclusion probability, ``0 < q ≤ 1``.
        rng (`np.random.Generator`): source of randomness; :func:`secure_rng` in production.

    Returns:
        `np.ndarray`: int64 positions, strictly increasing.

    Raises:
        PipelineInputError: ``n < 0`` or ``q`` outside ``(0, 1]``.
    """
    n = _check_count(n)
    q = _check_rate(q)
    _check_rng(rng)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if q > _MASK_ABOVE_Q:
        return np.flatnonzero(rng.random(n) < q).astype(np.int64, copy=False)
    mean = n * q
    batch = int(mean + 8.0 * math.sqrt(mean) + 32)
    scale = -math.log1p(-q)
    chunks: list[np.ndarray] = []
    last = -1.0  # position of the last kept record so far
    while True:
        # Geometric(q) gaps by inversion: floor(E / -log1p(-q)) + 1, E ~ Exp(1). For a continuous E this has
        # the same distribution as numpy's ceil(E / -log1p(-q)) (they differ only where E/scale is an integer,
        # a null event), but a draw of exactly E = 0 gives a gap of 1, never 0: positions are strictly
        # increasing even from a degenerate generator (issue 9). Positions stay float64 (exact below 2**53)
        # until cut at n, so a huge gap (tiny q) never overflows an integer.
        gaps = rng.standard_exponential(batch)
        np.divide(gaps, scale, out=gaps)
        np.floor(gaps, out=gaps)
        gaps += 1.0
        gaps[0] += last
        positions = np.cumsum(gaps, out=gaps)
        if positions[-1] >= n:
            chunks.append(positions[: np.searchsorted(positions, n)].astype(np.int64))
            break
        chunks.append(positions.astype(np.int64))
        last = float(positions[-1])
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def subsample_topk(shard: _Rows, query: np.ndarray, k: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """Return the ids of the ``k`` best records of a fresh Poisson subsample of ``shard``, best first.

    Mechanism: subsample first (:func:`poisson_subsample`, rate ``q``, over the row positions), keep the
    positions the index may search for this query (``shard.restrict``: all of them on flat; on ivf-flat those
    whose public-quantizer list is probed, a function of the query and public data only), score exactly those
    rows by inner product with the unit ``query`` and keep the ``k`` highest; equal scores are ordered by the
    smaller id, on flat and IVF alike. Records outside the sample are never scored, and there is no fallback
    to the full set: a sample with fewer than ``k`` records returns fewer ids (their mean is zero-padded by
    :func:`aggregate`, keeping the L2 sensitivity of the mean at ``2/k`` under add/remove-one; accountant:
    RDP of ``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))``).

    Args:
        shard (`index.Shard` or `index.MemoryShard`): the private records; only its primitives
            ``restrict``/``score``/``ids_at`` and ``num_records``/``dim`` are used.
        query (`np.ndarray`): unit query of shape ``(d,)`` or ``(1, d)``.
        k (`int`): number of neighbours, ``k ≥ 1``.
        q (`float`): Poisson inclusion probability, ``0 < q ≤ 1``.
        rng (`np.random.Generator`): :func:`secure_rng` in production.

    Returns:
        `np.ndarray`: at most ``k`` int64 ids, best first. Never released outside the process.

    Raises:
        PipelineInputError: bad ``k``, ``q``, ``rng`` or query (wrong dimension, not finite, not unit norm).
    """
    ids, _, _ = _subsample_search(shard, query, k, q, rng)
    return ids


def aggregate(vectors: np.ndarray, k: int) -> np.ndarray:
    """Return the mean of ``k`` neighbours: the sum of the ≤ ``k`` unit rows of ``vectors`` divided by ``k``.

    Fewer than ``k`` rows means the missing neighbours count as zero vectors (the reference code reused the
    last record instead, which breaks the bound). Every row is clipped onto the unit ball (``row / max(1,
    ‖row‖)``), so whatever the stored rows hold, adding or removing one record changes the result by at most
    ``2/k`` in L2 norm (add/remove-one adjacency); the result is not private until :func:`privatize` adds
    noise. Rows are never refused for their values: this runs after the charge, and an error that depends on
    the private rows would itself leak (issue 9); only shape errors, which depend on public sizes, raise. A
    non-finite row (which the index refuses at write and load time) is replaced by a zero row.

    Args:
        vectors (`np.ndarray`): ``(m, d)`` accepted neighbour embeddings, ``m ≤ k``, each of unit norm.
        k (`int`): the mechanism's number of neighbours, ``k ≥ 1``.

    Returns:
        `np.ndarray`: float32 vector of shape ``(d,)``, norm ≤ 1.

    Raises:
        PipelineInputError: not a 2-D array, or more than ``k`` rows (shape errors only).
    """
    k = _check_k(k)
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2:
        raise PipelineInputError(f"vectors must be a 2-D (m, d) array; found shape {rows.shape}; pass one row per neighbour")
    if rows.shape[0] > k:
        raise PipelineInputError(f"vectors must have at most k={k} rows; found {rows.shape[0]}; pass only the k accepted neighbours")
    rows = np.where(np.isfinite(rows).all(axis=1, keepdims=True), rows, 0.0)
    norms = np.linalg.norm(rows, axis=1)
    rows = rows / np.maximum(norms, 1.0)[:, None]  # clip onto the unit ball: the 2/k bound holds for any row
    return (rows.sum(axis=0) / k).astype(np.float32)


def privatize(aggregate: np.ndarray, sigma: float, *, _rng: np.random.Generator | None = None) -> np.ndarray:
    """Add isotropic Gaussian noise ``N(0, σ² I_d)`` to an aggregate of L2 sensitivity ``2/k``.

    The Gaussian mechanism of DP-RDM, sampled by OpenDP's Gaussian measurement on float vectors
    (:func:`accountant.gaussian_measurement`: the Gaussian is sampled exactly and rounded to float, which closes
    the floating-point attack of Mironov 2012). With sensitivity ``2/k`` (add/remove-one) the ledger charges the
    noise multiplier OpenDP's privacy map states (≤ ``kσ/2``) as ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``
    (dp-accounting RDP). The float32 cast of OpenDP's output is post-processing. ``sigma = 0`` returns the
    aggregate unchanged (non-private, ε = ∞; only the audit uses it). A 2-D array gets independent noise per
    coordinate (the audit draws many releases in one call).

    Args:
        aggregate (`np.ndarray`): ``(d,)`` output of :func:`aggregate` (or ``(n, d)`` of several).
        sigma (`float`): noise standard deviation per coordinate, ``σ ≥ 0``.
        _rng (`np.random.Generator`, *optional*): TEST HOOK ONLY, not part of the API: draw the noise from this
            seeded numpy generator (a float Gaussian) instead of OpenDP, for reproducible tests and benchmarks.

    Returns:
        `np.ndarray`: float32 noisy vector(s), the only thing a private query releases.

    Raises:
        PipelineInputError: not a finite 1-D or 2-D array, or ``sigma`` negative or not finite.
    """
    vector = np.asarray(aggregate, dtype=np.float64)
    if vector.ndim not in (1, 2) or not np.isfinite(vector).all():
        raise PipelineInputError(f"aggregate must be a finite 1-D vector; found shape {vector.shape}; pass the output of aggregate()")
    sigma = _check_sigma(sigma)
    if sigma == 0.0:
        return vector.astype(np.float32)
    if _rng is not None:
        _check_rng(_rng)
        return (vector + _rng.normal(0.0, sigma, size=vector.shape)).astype(np.float32)
    from accountant import gaussian_measurement

    noisy = gaussian_measurement(sigma)(vector.ravel().tolist())
    return np.asarray(noisy, dtype=np.float64).reshape(vector.shape).astype(np.float32)


# --------------------------------------------------------------------------------------------- internals


class _Rows(Protocol):
    """The shard primitives the mechanism uses (``index.Shard``, ``index.MemoryShard``); row i is ids[i]."""

    @property
    def num_records(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def restrict(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray: ...

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray: ...

    def ids_at(self, positions: np.ndarray) -> np.ndarray: ...


def _subsample_search(
    shard: _Rows, query: np.ndarray, k: int, q: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subsample, score the kept records and return ``(ids, scores, positions)`` of the ≤ k best, best first.

    The scores and positions stay inside the process: :mod:`pipeline.retrieve` uses them only to merge shards
    and fetch the chosen rows (``shard.rows(positions)``).
    """
    k, q = _check_k(k), _check_rate(q)
    _check_rng(rng)
    vector = _check_query(query, shard.dim)
    positions = shard.restrict(vector, poisson_subsample(shard.num_records, q, rng))
    if positions.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    return _topk_flat(shard, vector, positions, k)


def _topk_flat(
    shard: _Rows, query: np.ndarray, positions: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score exactly the kept rows (no copy of the rows) and select the k best, ties by the smaller id."""
    scores = shard.score(query, positions)
    candidates = _cut_candidates(scores, k)
    kept = positions[candidates]  # ids are looked up only for the few records at or above the cut
    ids = shard.ids_at(kept)
    order = _order_by_score_then_id(scores[candidates], ids, k)
    return ids[order], scores[candidates[order]], kept[order]


def _best_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first, equal scores ordered by the smaller id (exact at the cut)."""
    candidates = _cut_candidates(scores, k)
    return candidates[_order_by_score_then_id(scores[candidates], ids[candidates], k)]


def _cut_candidates(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of every score ≥ the k-th highest: the k best plus every record tied with the k-th (they compete on id)."""
    if scores.size <= k:
        return np.arange(scores.size)
    cut = np.partition(scores, scores.size - k)[scores.size - k]  # k-th highest score (no index array built)
    return np.flatnonzero(scores >= cut)


def _order_by_score_then_id(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best of ``scores`` (higher first, equal scores by the smaller id)."""
    return np.lexsort((ids, -scores.astype(np.float64)))[:k]


def _check_query(query: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(query, dtype=np.float32)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.shape != (dim,):
        raise PipelineInputError(f"query must be one vector of dimension {dim}; found shape {vector.shape}; encode it with the index's encoder")
    if not np.isfinite(vector).all():
        raise PipelineInputError("query must be finite; found NaN or inf; encode a valid prompt or image")
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > _UNIT_TOLERANCE:
        raise PipelineInputError(f"query must have unit L2 norm; found {norm:.4f}; divide it by its norm first")
    return np.ascontiguousarray(vector)


def _check_integer(value: int, *, name: str, minimum: int, fix: str) -> int:
    """``value`` as an int ``>= minimum`` (bools refused), else a one-line PipelineInputError."""
    must = f"{name} must be an integer ≥ {minimum}" if minimum else f"{name} must be a non-negative integer"
    if isinstance(value, bool):
        raise PipelineInputError(f"{must}; found {value!r}; {fix}")
    try:
        value = operator.index(value)
    except TypeError:
        raise PipelineInputError(f"{must}; found {value!r}; {fix}") from None
    if value < minimum:
        raise PipelineInputError(f"{must}; found {value}; {fix}")
    return value


def _check_real(value: float, *, name: str, valid, must: str, fix: str) -> float:
    """``value`` as a float for which ``valid`` holds, else a one-line PipelineInputError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PipelineInputError(f"{name} must be {must}; found {value!r}; {fix}") from None
    if not valid(number):
        raise PipelineInputError(f"{name} must be {must}; found {number}; {fix}")
    return number


def _check_k(k: int) -> int:
    return _check_integer(k, name="k", minimum=1, fix="pass the scope's k")


def _check_count(n: int) -> int:
    return _check_integer(n, name="n", minimum=0, fix="pass the number of records")


def _check_rate(q: float) -> float:
    return _check_real(q, name="q", valid=lambda x: 0.0 < x <= 1.0, must="a probability in (0, 1]", fix="pass the scope's q")


def _check_sigma(sigma: float) -> float:
    return _check_real(
        sigma, name="sigma", valid=lambda x: math.isfinite(x) and x >= 0.0, must="a finite number ≥ 0",
        fix="pass the scope's sigma",
    )  # fmt: skip


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise PipelineInputError(
            f"rng must be a numpy Generator; found {type(rng).__name__}; pass pipeline.mechanism.secure_rng()"
        )
