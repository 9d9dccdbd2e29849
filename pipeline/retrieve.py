"""Private retrieval over one or more shards of a :class:`index.PrivateIndex`, charged to a ledger first.

Invariants:

* Every targeted shard's files (faiss index, ids, embeddings) are loaded and checked (sizes, sha256, shapes)
  **before** the charge, so a damaged shard is refused (``IndexCorruptError``, exit 3) with nothing charged.
  Loading is query-independent and releases nothing.
* The ledger is charged (one transaction over every targeted scope) **before** any record is searched; if the
  charge raises (``BudgetExceeded``, ``LedgerUnavailable``) nothing is retrieved.
* A query releases only :class:`PrivateRelease`: the noisy mean and the budget receipt. Neighbour ids, scores
  and the un-noised mean never leave :meth:`PrivateRetriever.retrieve`; nothing from them is logged.
* Scopes are named after shards. Every targeted scope must hold the same mechanism ``(k, q, sigma)``: the union
  of independent Poisson subsamples at one rate ``q`` is a Poisson subsample of the union, so a multi-shard
  query is one run of the mechanism over the union and costs each scope one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import PipelineInputError, PrivacyRefusal
from pipeline.mechanism import _check_query, _subsample_search, aggregate, privatize, secure_rng

if TYPE_CHECKING:
    from accountant import Ledger, Mechanism, Receipt, ScopeStatus
    from index import PrivateIndex

__all__ = ["PrivateRelease", "PrivateRetriever", "merge_topk", "shard_streams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateRelease:
    """Everything one private query releases: the noisy vector and the committed charge. Nothing else.

    Attributes:
        vector (`np.ndarray`): read-only float32 ``(d,)`` noisy mean ``(1/k)·Σ neighbours + N(0, σ² I)``.
        k, q, sigma: the mechanism that produced it (public parameters of the scopes).
        receipt (`accountant.Receipt`): proof that the charge was committed before the release.
        statuses (`tuple[accountant.ScopeStatus, ...]`): each charged scope's budget right after this query.
    """

    vector: np.ndarray
    k: int
    q: float
    sigma: float
    receipt: Receipt
    statuses: tuple[ScopeStatus, ...]

    @property
    def epsilon_spent(self) -> float:
        """Largest ε spent (at each scope's δ) among the charged scopes, after this query."""
        return max(status.epsilon_spent for status in self.statuses)

    @property
    def queries_remaining(self) -> int:
        """Queries still possible on every charged scope (the smallest remainder)."""
        return min(status.queries_remaining for status in self.statuses)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form: mechanism, receipt and budget (the vector itself is left out of JSON)."""
        return {
            "k": self.k,
            "q": self.q,
            "sigma": self.sigma,
            "epsilon_spent": self.epsilon_spent,
            "queries_remaining": self.queries_remaining,
            "scopes": {status.scope: status.to_dict() for status in self.statuses},
            "receipt": self.receipt.to_dict(),
        }


class PrivateRetriever:
    """DP retrieval (DP-RDM): charge, Poisson-subsample, top-k, mean, Gaussian noise.

    Mechanism: each record kept independently with probability ``q`` (fresh per query, CSPRNG), exact top-``k``
    by inner product with the unit query over the kept records of all targeted shards, mean with zero padding,
    plus ``N(0, σ² I)``. Sensitivity ``2/k`` (L2, add/remove-one), so noise multiplier ``kσ/2``; accountant:
    dp-accounting RDP on ``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))``, one event per query and scope.

    Args:
        index (`index.PrivateIndex`): the opened private index.
        ledger (`accountant.Ledger`): the budget ledger holding one scope per shard (named after the shard).
        shards (`Sequence[str]`, *optional*): shards to query; defaults to every non-empty shard of the index.

    Raises:
        PipelineInputError: an unknown, repeated or empty shard selection.
    """

    def __init__(self, index: PrivateIndex, ledger: Ledger, *, shards: Sequence[str] | None = None) -> None:
        names = list(index.shard_names)
        # default: every shard that holds records (a shard left empty by cross-shard duplicates has no scope)
        default = [name for name in names if index.shard(name).num_records > 0]
        chosen = default if shards is None else [str(name) for name in shards]
        if not chosen:
            raise PipelineInputError("no shard to query; the index is empty or --shard was given no name; build the index first")
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise PipelineInputError(f"unknown shard {unknown[0]!r}; the index has {names}; pass one of them with --shard")
        if len(set(chosen)) != len(chosen):
            raise PipelineInputError(f"shards must be distinct; found {chosen}; name each shard once")
        from pipeline.ledgers import require_own_ledger

        require_own_ledger(index, ledger)  # a query over an index charges only that index's own ledger
        self.index = index
        self.ledger = ledger
        self.shards: tuple[str, ...] = tuple(chosen)
        self._mechanism = self._resolve_mechanism()

    @property
    def dim(self) -> int:
        """Embedding dimension of the index (and of the released vector)."""
        return int(self.index.dim)

    def mechanism(self) -> Mechanism:
        """The ``(k, q, sigma)`` mechanism shared by every targeted scope (resolved once, when constructed)."""
        return self._mechanism

    def _resolve_mechanism(self) -> Mechanism:
        """Read the targeted scopes' mechanism from the ledger, once; refuse missing or mismatched scopes.

        Raises:
            PrivacyRefusal: a shard has no scope in the ledger, or the scopes disagree.
        """
        scopes = set(self.ledger.scopes())
        mechanisms = []
        for shard in self.shards:
            if shard not in scopes:
                raise PrivacyRefusal(
                    f"shard {shard!r} has no budget scope in the ledger; run 'dprdm budget init --index DIR --shard {shard}' first"
                )
            mechanisms.append(self.ledger.mechanism(shard))
        first = mechanisms[0]
        for shard, other in zip(self.shards[1:], mechanisms[1:], strict=True):
            if (other.k, other.q, other.sigma) != (first.k, first.q, first.sigma):
                raise PrivacyRefusal(
                    f"shards {self.shards[0]!r} and {shard!r} have different mechanisms "
                    f"(k={first.k}, q={first.q}, sigma={first.sigma} vs k={other.k}, q={other.q}, sigma={other.sigma}); "
                    "one query is one mechanism run over the union, so query them separately or give them one mechanism"
                )
        return first

    def retrieve(
        self,
        query: np.ndarray,
        *,
        caller: str | None = None,
        purpose: str | None = None,
        _rng: np.random.Generator | None = None,
    ) -> PrivateRelease:
        """Charge one query to every targeted scope, then release the noisy mean of the private neighbours.

        Args:
            query (`np.ndarray`): unit query embedding ``(d,)`` from the index's encoder.
            caller (`str`, *optional*): label recorded with the charge.
            purpose (`str`, *optional*): label recorded with the charge.
            _rng (`np.random.Generator`, *optional*): TEST HOOK ONLY, not part of the API: a seeded generator for
                the subsample and the noise. Left out, every query draws from a fresh
                :func:`pipeline.mechanism.secure_rng` (OS CSPRNG).

        Returns:
            `PrivateRelease`: the noisy vector and the committed receipt.

        Raises:
            PipelineInputError: a query of the wrong dimension, not finite or not of unit norm.
            PrivacyRefusal: missing or mismatched scopes (nothing charged).
            index.IndexCorruptError: a targeted shard's files are damaged or replaced (nothing charged).
            accountant.BudgetExceeded: the query does not fit one of the budgets (nothing charged or retrieved).
            accountant.LedgerUnavailable: the ledger cannot be read or written (nothing charged or retrieved).
        """
        # 1. validate (the mechanism was resolved, and the ledger checked to be the index's own, at construction)
        vector = _check_query(query, self.dim)
        mechanism = self._mechanism
        # 2. load and check every targeted shard (cached): damage surfaces here, before anything is charged
        records = self._load_targets()
        # 3. charge: one transaction over every targeted scope, delta < 1/N checked against each shard's current
        #    N; an exception here releases nothing
        receipt = self.ledger.charge(list(self.shards), records=records, caller=caller, purpose=purpose)
        # 4. fresh Poisson subsample of every shard, exact top-k of the union
        rng = secure_rng() if _rng is None else _rng
        neighbours = self._neighbours(vector, mechanism.k, mechanism.q, rng)
        # 5. zero-padded mean, then Gaussian noise (OpenDP's sampler; a seeded float Gaussian only under the hook)
        noisy = privatize(aggregate(neighbours, mechanism.k), mechanism.sigma, _rng=_rng)
        noisy.setflags(write=False)
        return PrivateRelease(
            vector=noisy,
            k=mechanism.k,
            q=mechanism.q,
            sigma=mechanism.sigma,
            receipt=receipt,
            statuses=receipt.statuses,
        )

    def _load_targets(self) -> dict[str, int]:
        """Load and check every targeted shard (cached on the view); return each shard's current N."""
        return {name: self.index.shard(name).load().num_records for name in self.shards}

    def _neighbours(self, query: np.ndarray, k: int, q: float, rng: np.random.Generator) -> np.ndarray:
        """Embeddings of the k best records of the union of per-shard Poisson subsamples (≤ k rows).

        Shard ``i`` draws its subsample from ``shard_streams(rng, n)[i]``: one independent stream per shard, so a
        shard served elsewhere (:mod:`pipeline.scale.ray_shards`) consumes exactly the same randomness.
        """
        found = [
            _subsample_search(self.index.shard(name), query, k, q, stream)
            for name, stream in zip(self.shards, shard_streams(rng, len(self.shards)), strict=True)
        ]
        chosen = merge_topk(found, k)
        rows = [self.index.shard(self.shards[owner]).rows(positions) for owner, positions in chosen]
        return np.concatenate(rows, axis=0) if rows else np.empty((0, self.dim), dtype=np.float32)


def shard_streams(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """``count`` independent generators spawned from ``rng`` (one per targeted shard, in shard order).

    ``Generator.spawn`` derives child seed sequences without advancing ``rng``'s own stream, which then draws the
    noise. From :func:`pipeline.mechanism.secure_rng` the children are as unpredictable as their parent.
    """
    return rng.spawn(count)


def merge_topk(
    found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int
) -> list[tuple[int, np.ndarray]]:
    """Exact global top-k over per-shard ``(ids, scores, positions)`` lists: score, then shard order, then id.

    Returns ``[(shard number, positions of its chosen rows)]`` in increasing shard number, for the shards that
    hold at least one of the k best. Private values: used inside the mechanism only.
    """
    if not found:
        return []
    owner = np.concatenate([np.full(ids.size, number) for number, (ids, _, _) in enumerate(found)])
    record = np.concatenate([ids for ids, _, _ in found])
    score = np.concatenate([scores for _, scores, _ in found])
    position = np.concatenate([positions for _, _, positions in found])
    # Global top-k: score, then shard order, then id (the per-shard lists already obey the id tie-break).
    best = np.lexsort((record, owner, -score.astype(np.float64)))[:k]
    return [(int(o), position[best][owner[best] == o]) for o in np.unique(owner[best])]
