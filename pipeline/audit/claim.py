"""The ε the project claims for the DP retrieval mechanism, as the project's accountant computes it.

Mechanism: Poisson subsample (rate q), mean of the top-k unit embeddings, + N(0, σ² I); L2 sensitivity
2/k under add/remove-one adjacency, so noise multiplier z = kσ/2; accountant: dp-accounting RDP of
PoissonSampledDpEvent(q, GaussianDpEvent(z)) composed over the queries (``accountant.epsilon_for``,
the code path the ledger charges with). σ = 0 is a non-private mechanism: it claims ε = ∞.
"""

from __future__ import annotations

import math

from accountant import Mechanism, epsilon_for

__all__ = ["claimed_epsilon"]


def claimed_epsilon(*, k: int, q: float, sigma: float, queries: int, delta: float) -> float:
    """ε(δ) the accountant charges for ``queries`` runs of the mechanism (``math.inf`` when σ = 0)."""
    if sigma == 0.0:
        return math.inf
    return float(epsilon_for(Mechanism(k=k, q=q, sigma=sigma), queries=queries, delta=delta))
