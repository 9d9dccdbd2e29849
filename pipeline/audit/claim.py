"""The ε the project claims for the DP retrieval mechanism, as the accountant computes it.

Mechanism: Poisson subsample (rate q), mean of the top-k unit embeddings, + N(0, σ² I); L2 sensitivity
2/k under add/remove-one adjacency, so noise multiplier z = kσ/2; accountant: dp-accounting RDP of
PoissonSampledDpEvent(q, GaussianDpEvent(z)) composed over the queries. σ = 0 claims ε = ∞.
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting import rdp

__all__ = ["claimed_epsilon"]


def claimed_epsilon(*, k: int, q: float, sigma: float, queries: int, delta: float) -> float:
    """ε(δ) the accountant charges for ``queries`` runs of the mechanism (math.inf when σ = 0)."""
    if sigma == 0.0:
        return math.inf
    # TODO(issue 4): switch to accountant.epsilon_for(Mechanism(k, q, sigma), ...) once it lands.
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma * k / 2.0))
    accountant.compose(event, queries)
    return float(accountant.get_epsilon(delta))
