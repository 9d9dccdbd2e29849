"""Canary membership-inference audit of the DP retrieval mechanism (one query, one canary).

Procedure (Jagielski et al. 2020, arXiv 2006.07709; Nasr et al. 2021, arXiv 2101.04535):

1. Neighbouring datasets D and D ∪ {c} (add/remove-one adjacency), c a unit canary far from D
   (:mod:`pipeline.audit.canary`); the query is c itself.
2. Run the real mechanism (``pipeline.mechanism.subsample_topk`` → ``aggregate`` → ``privatize``) with
   the audited (k, q, σ) ``trials`` times on each dataset.
3. The attack scores each release by ⟨release, u⟩ (the Gaussian likelihood-ratio direction of the
   mean shift the canary causes). The first half of the runs of each world picks the threshold, the
   second half measures FPR/FNR: the reported bound is for a test fixed before it saw those runs.
4. Clopper–Pearson turns the rates into ε_lb at confidence 1 − α (:mod:`pipeline.audit.stats`).

Randomness: the mechanism uses ``pipeline.mechanism.secure_rng()`` (OS CSPRNG) unless a seeded ``rng``
is passed as the test-only hook ``_rng`` — tests do that, the CLI never does. The attack side (orthogonal canary candidate,
synthetic default data) uses ``attack_seed``. The audit releases only rates and bounds, never scores,
ids or aggregates.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.audit.canary import choose_canary, flat_index, unit_rows
from pipeline.audit.claim import claimed_epsilon
from pipeline.audit.stats import best_threshold, clopper_pearson_upper, epsilon_lower_bound
from pipeline.errors import PipelineInputError

__all__ = ["AuditReport", "run_audit", "synthetic_embeddings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Outcome of one audit. ``passed`` is True iff the claim is finite and ε_lb ≤ claimed ε (one query).

    Attributes:
        k, q, sigma, delta: the audited mechanism and the δ of the claim.
        claimed_epsilon: accountant ε(δ) for one query (``inf`` when σ = 0: no finite claim).
        queries: T, the number of queries of the scope's plan.
        claimed_epsilon_queries: accountant ε(δ) for T queries.
        empirical_epsilon_lower_bound: ε_lb from the attack, valid with probability ``confidence``.
        confidence: 1 − α of the lower bound.
        trials: mechanism runs on each of D and D ∪ {canary}.
        evaluation_trials: runs per world that measured the rates (the rest chose the threshold).
        fpr, fnr: observed rates of the fixed test on the evaluation runs.
        fpr_upper, fnr_upper: their one-sided Clopper–Pearson upper bounds (α/2 each).
        records, dim: size of D (the CLI withholds ``records`` when D is a private shard).
        canary: how the canary was built.
        mechanism_rng: "secure" (OS CSPRNG) or "seeded" (tests only).
        seconds: wall time of the audit.
    """

    k: int
    q: float
    sigma: float
    delta: float
    claimed_epsilon: float
    queries: int
    claimed_epsilon_queries: float
    empirical_epsilon_lower_bound: float
    confidence: float
    trials: int
    evaluation_trials: int
    fpr: float
    fnr: float
    fpr_upper: float
    fnr_upper: float
    records: int
    dim: int
    canary: str
    mechanism_rng: str
    seconds: float
    passed: bool

    def to_dict(self) -> dict:
        """JSON-ready dict; an infinite claim (σ = 0) becomes ``null``."""
        return {
            key: (None if isinstance(v, float) and math.isinf(v) else v) for key, v in asdict(self).items()
        }


def synthetic_embeddings(n: int = 1000, dim: int = 64, *, seed: int = 0) -> np.ndarray:
    """CLIP-like unit embeddings: a shared direction plus isotropic spread (mean cosine ≈ 0.5)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    rows = common + rng.standard_normal((n, dim)) / math.sqrt(dim)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def run_audit(
    *,
    k: int,
    q: float,
    sigma: float,
    delta: float,
    trials: int,
    _rng: np.random.Generator | None = None,
    embeddings: np.ndarray | None = None,
    queries: int = 1,
    confidence: float = 0.95,
    attack_seed: int = 0,
    mechanism_sigma: float | None = None,
) -> AuditReport:
    """Attack the DP retrieval mechanism with a canary and bound its ε from below.

    Args:
        k, q, sigma: the mechanism audited (neighbours, Poisson rate, noise std per coordinate).
        delta: δ of the claim; ε_lb is computed at this δ.
        trials: mechanism runs on each of the two datasets (≥ 4; a few thousand take seconds).
        _rng: TEST HOOK ONLY, not part of the API: a seeded mechanism generator; left out, the mechanism
            draws from the OS CSPRNG (:func:`pipeline.mechanism.secure_rng`).
        embeddings: D as (n, d) rows (re-normalised to unit norm); None → :func:`synthetic_embeddings`.
        queries: T for the second claim (the scope's planned number of queries).
        confidence: 1 − α of the lower bound.
        attack_seed: seed of the attack side (canary candidate, synthetic data); never of the mechanism.
        mechanism_sigma: fault injection for testing the audit itself: run the mechanism with this σ
            while the claim is computed for ``sigma`` (e.g. 0 to simulate "noise forgotten").

    Returns:
        The :class:`AuditReport`.

    Raises:
        PipelineInputError: a parameter out of range or bad embeddings.
    """
    _validate(k=k, q=q, sigma=sigma, delta=delta, trials=trials, queries=queries, confidence=confidence)
    if mechanism_sigma is not None:
        _validate_sigma(mechanism_sigma, name="mechanism_sigma")
    k, trials, queries = int(k), int(trials), int(queries)
    q, sigma, delta, confidence = float(q), float(sigma), float(delta), float(confidence)
    from pipeline import mechanism  # late: the audit module loads without faiss-heavy imports

    started = time.perf_counter()
    attack_rng = np.random.default_rng(attack_seed)
    data = unit_rows(synthetic_embeddings(seed=attack_seed) if embeddings is None else embeddings)
    canary = choose_canary(data, k=k, q=q, rng=attack_rng)
    mech_rng = mechanism.secure_rng() if _rng is None else _rng
    noise = sigma if mechanism_sigma is None else mechanism_sigma

    with_canary = np.vstack([data, canary.vector[None, :]])
    scores_out = _release_scores(data, canary, k=k, q=q, sigma=noise, trials=trials, rng=mech_rng, noise_rng=_rng)
    scores_in = _release_scores(
        with_canary, canary, k=k, q=q, sigma=noise, trials=trials, rng=mech_rng, noise_rng=_rng
    )

    half = trials // 2
    alpha = 1.0 - confidence
    threshold = best_threshold(scores_out[:half], scores_in[:half], delta=delta, alpha=alpha)
    eval_out, eval_in = scores_out[half:], scores_in[half:]
    false_pos = int((eval_out > threshold).sum())
    false_neg = int((eval_in <= threshold).sum())
    n_eval = trials - half
    bound = epsilon_lower_bound(false_pos, n_eval, false_neg, n_eval, delta=delta, alpha=alpha)
    claim_one = claimed_epsilon(k=k, q=q, sigma=sigma, queries=1, delta=delta)
    claim_all = claimed_epsilon(k=k, q=q, sigma=sigma, queries=queries, delta=delta)
    return AuditReport(
        k=k,
        q=q,
        sigma=sigma,
        delta=delta,
        claimed_epsilon=claim_one,
        queries=queries,
        claimed_epsilon_queries=claim_all,
        empirical_epsilon_lower_bound=bound,
        confidence=confidence,
        trials=trials,
        evaluation_trials=n_eval,
        fpr=false_pos / n_eval,
        fnr=false_neg / n_eval,
        fpr_upper=clopper_pearson_upper(false_pos, n_eval, alpha / 2),
        fnr_upper=clopper_pearson_upper(false_neg, n_eval, alpha / 2),
        records=int(data.shape[0]),
        dim=int(data.shape[1]),
        canary=canary.kind,
        mechanism_rng="secure" if _rng is None else "seeded",
        seconds=time.perf_counter() - started,
        passed=math.isfinite(claim_one) and bound <= claim_one,
    )


def _release_scores(
    vectors: np.ndarray,
    canary,
    *,
    k: int,
    q: float,
    sigma: float,
    trials: int,
    rng: np.random.Generator,
    noise_rng: np.random.Generator | None,
) -> np.ndarray:
    """⟨release, u⟩ for ``trials`` runs of the real mechanism on one dataset (one index, reused).

    The noise of all runs is drawn in one call of the production sampler (OpenDP; independent per coordinate,
    so the same distribution as one call per run) unless the test hook ``noise_rng`` is given.
    """
    from pipeline.mechanism import aggregate, privatize, subsample_topk

    index = flat_index(vectors)
    aggregates = np.empty((trials, vectors.shape[1]), dtype=np.float64)
    for trial in range(trials):
        ids = subsample_topk(index, canary.vector, k, q, rng)
        aggregates[trial] = aggregate(vectors[ids], k)
    releases = privatize(aggregates, sigma, _rng=noise_rng).astype(np.float64)
    return releases @ canary.direction.astype(np.float64)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _validate_sigma(sigma: float, *, name: str) -> None:
    if not (_is_real(sigma) and math.isfinite(sigma) and sigma >= 0):
        raise PipelineInputError(f"{name} must be a finite number >= 0; found {sigma!r}; pass e.g. sigma=0.5")


def _validate(
    *, k: int, q: float, sigma: float, delta: float, trials: int, queries: int, confidence: float
) -> None:
    """Refuse out-of-range parameters with one-line messages (what, found, fix)."""
    checks = [
        (_is_int(k) and k >= 1, f"k must be an integer >= 1; found {k!r}"),
        (_is_real(q) and 0.0 < q <= 1.0, f"q must be in (0, 1]; found {q!r}"),
        (_is_real(delta) and 0.0 < delta < 1.0, f"delta must be in (0, 1); found {delta!r}"),
        (_is_int(trials) and trials >= 4, f"trials must be an integer >= 4; found {trials!r}"),
        (_is_int(queries) and queries >= 1, f"queries must be an integer >= 1; found {queries!r}"),
        (
            _is_real(confidence) and 0.0 < confidence < 1.0,
            f"confidence must be in (0, 1); found {confidence!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise PipelineInputError(f"{message}; fix the audit parameter")
    _validate_sigma(sigma, name="sigma")
