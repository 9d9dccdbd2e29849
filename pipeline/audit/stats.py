"""Statistics of a membership-inference audit: Clopper–Pearson bounds and the empirical ε lower bound.

A test that says "canary in" with false-positive rate FPR and false-negative rate FNR against an
(ε, δ)-DP mechanism must satisfy, for both orderings of the neighbouring pair (add/remove-one),

    FPR + e^ε · FNR ≥ 1 − δ   and   FNR + e^ε · FPR ≥ 1 − δ

(Kairouz, Oh & Viswanath 2015, Thm. 2.1; used for auditing by Jagielski et al. 2020, arXiv 2006.07709,
and Nasr et al. 2021, arXiv 2101.04535). With one-sided Clopper–Pearson upper bounds on both rates,
each at confidence 1 − α/2 (union bound: joint confidence 1 − α), any ε that violates either inequality
is refuted, which gives

    ε_lb = max(log((1 − δ − FPR_hi) / FNR_hi), log((1 − δ − FNR_hi) / FPR_hi), 0).

Pure functions, no I/O, no randomness.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

__all__ = [
    "clopper_pearson_upper",
    "clopper_pearson_lower",
    "epsilon_lower_bound",
    "best_threshold",
]


def _check_counts(successes: int, trials: int, alpha: float) -> None:
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0; found {successes} of {trials}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); found {alpha}")


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided upper Clopper–Pearson bound: P(p ≤ bound) ≥ 1 − alpha for a binomial proportion.

    Args:
        successes: number of events observed.
        trials: number of independent trials.
        alpha: error probability of the one-sided bound.

    Returns:
        The exact (conservative) upper confidence bound; 1.0 when every trial succeeded.
    """
    _check_counts(successes, trials, alpha)
    if successes == trials:
        return 1.0
    return float(beta.ppf(1.0 - alpha, successes + 1, trials - successes))


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided lower Clopper–Pearson bound: P(p ≥ bound) ≥ 1 − alpha; 0.0 when nothing succeeded."""
    _check_counts(successes, trials, alpha)
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def epsilon_lower_bound(
    false_positives: int, negatives: int, false_negatives: int, positives: int, *, delta: float, alpha: float
) -> float:
    """Empirical ε lower bound of one fixed test at joint confidence 1 − alpha (see the module docstring).

    Args:
        false_positives: runs on D (canary out) that the test called "in".
        negatives: runs on D.
        false_negatives: runs on D ∪ {canary} that the test called "out".
        positives: runs on D ∪ {canary}.
        delta: the δ of the claim being audited.
        alpha: total error probability, split evenly between the two rate bounds.

    Returns:
        ε_lb ≥ 0; a mechanism that is (ε, δ)-DP with ε < ε_lb would produce these counts with
        probability at most alpha.
    """
    fpr_hi = clopper_pearson_upper(false_positives, negatives, alpha / 2)
    fnr_hi = clopper_pearson_upper(false_negatives, positives, alpha / 2)
    return _epsilon_from_rates(fpr_hi, fnr_hi, delta)


def _epsilon_from_rates(fpr_hi: float, fnr_hi: float, delta: float) -> float:
    best = 0.0
    for rate_a, rate_b in ((fpr_hi, fnr_hi), (fnr_hi, fpr_hi)):
        numerator = 1.0 - delta - rate_a
        if numerator > 0.0 and rate_b > 0.0:
            best = max(best, math.log(numerator / rate_b))
    return best


def best_threshold(scores_out: np.ndarray, scores_in: np.ndarray, *, delta: float, alpha: float) -> float:
    """Threshold t for the test "canary in iff score > t" that maximises ε_lb on these (selection) runs.

    Every midpoint between consecutive distinct scores is a candidate; the counts for all of them come
    from two sorted arrays, so the scan is O(n log n). Evaluate the chosen t on *fresh* runs: reusing
    the selection runs would make the reported bound optimistic (multiple testing).

    Args:
        scores_out: test statistic on runs without the canary.
        scores_in: test statistic on runs with the canary.
        delta: the δ of the claim being audited.
        alpha: confidence parameter used to score candidates (CP bounds penalise thresholds that rest
            on a handful of runs).

    Returns:
        The chosen threshold (a finite float).
    """
    out_sorted = np.sort(np.asarray(scores_out, dtype=np.float64))
    in_sorted = np.sort(np.asarray(scores_in, dtype=np.float64))
    values = np.unique(np.concatenate([out_sorted, in_sorted]))
    if values.size == 1:
        return float(values[0])
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0])
    n_out, n_in = out_sorted.size, in_sorted.size
    false_pos = n_out - np.searchsorted(out_sorted, candidates, side="right")
    false_neg = np.searchsorted(in_sorted, candidates, side="right")
    fpr_hi = _upper_bounds(false_pos, n_out, alpha / 2)
    fnr_hi = _upper_bounds(false_neg, n_in, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_a = np.log(np.maximum(1.0 - delta - fpr_hi, 0.0) / fnr_hi)
        eps_b = np.log(np.maximum(1.0 - delta - fnr_hi, 0.0) / fpr_hi)
    eps = np.nan_to_num(np.maximum(eps_a, eps_b), nan=0.0, neginf=0.0)
    return float(candidates[int(np.argmax(eps))])


def _upper_bounds(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """Vectorised :func:`clopper_pearson_upper` over an array of success counts."""
    successes = np.asarray(successes, dtype=np.float64)
    safe = np.minimum(successes, trials - 1)  # beta.ppf needs b > 0; the x == n case is set to 1 below
    bounds = beta.ppf(1.0 - alpha, safe + 1, trials - safe)
    return np.where(successes >= trials, 1.0, bounds)
