"""Clopper–Pearson bounds and the ε lower bound against closed forms and an independent binomial reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from pipeline.audit.stats import (
    best_threshold,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound,
)


@pytest.mark.parametrize(
    ("successes", "trials", "lower", "upper"),
    [(1, 10, 0.002528579, 0.4450161), (5, 10, 0.1870860, 0.8129140), (0, 20, 0.0, 0.1684335)],
    ids=["1-of-10", "5-of-10", "0-of-20"],
)
def test_clopper_pearson_matches_published_95_intervals(successes, trials, lower, upper):
    # R's binom.test two-sided 95% exact intervals (7 digits) = one-sided Clopper–Pearson bounds at 2.5%.
    assert clopper_pearson_lower(successes, trials, 0.025) == pytest.approx(lower, abs=5e-7)
    assert clopper_pearson_upper(successes, trials, 0.025) == pytest.approx(upper, abs=5e-7)


@pytest.mark.parametrize("trials", [1, 7, 100, 1000])
def test_zero_successes_upper_bound_is_closed_form(trials):
    alpha = 0.05
    assert clopper_pearson_upper(0, trials, alpha) == pytest.approx(1 - alpha ** (1 / trials), rel=1e-10)
    assert clopper_pearson_upper(trials, trials, alpha) == 1.0
    assert clopper_pearson_lower(trials, trials, alpha) == pytest.approx(alpha ** (1 / trials), rel=1e-10)


@pytest.mark.parametrize(
    ("successes", "trials"), [(3, 50), (17, 40), (99, 100)], ids=["3/50", "17/40", "99/100"]
)
def test_upper_bound_inverts_the_binomial_cdf(successes, trials):
    # Independent reference: the exact upper bound p solves P(X <= x; n, p) = alpha.
    alpha = 0.05
    upper = clopper_pearson_upper(successes, trials, alpha)
    assert binom.cdf(successes, trials, upper) == pytest.approx(alpha, abs=1e-9)
    lower = clopper_pearson_lower(successes, trials, alpha)
    assert binom.sf(successes - 1, trials, lower) == pytest.approx(alpha, abs=1e-9)


def test_perfect_attack_bound_is_closed_form():
    # No errors on n runs per world: both rate bounds are 1 - (alpha/2)^(1/n).
    n, alpha, delta = 1000, 0.05, 1e-6
    hi = 1 - (alpha / 2) ** (1 / n)
    expected = math.log((1 - delta - hi) / hi)
    assert epsilon_lower_bound(0, n, 0, n, delta=delta, alpha=alpha) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(5.6, abs=0.01)


def test_useless_attack_bounds_nothing():
    assert epsilon_lower_bound(50, 100, 50, 100, delta=1e-5, alpha=0.05) == 0.0
    assert epsilon_lower_bound(100, 100, 0, 100, delta=1e-5, alpha=0.05) == 0.0


def test_bound_is_symmetric_in_the_two_error_kinds():
    a = epsilon_lower_bound(2, 500, 300, 500, delta=1e-5, alpha=0.05)
    b = epsilon_lower_bound(300, 500, 2, 500, delta=1e-5, alpha=0.05)
    assert a == pytest.approx(b, rel=1e-12) and a > 0.5


@pytest.mark.parametrize(
    "bad", [(-1, 10), (11, 10), (0, 0)], ids=["negative", "more-than-trials", "no-trials"]
)
def test_bad_counts_raise(bad):
    with pytest.raises(ValueError, match="successes <= trials"):
        clopper_pearson_upper(*bad, 0.05)


def test_best_threshold_separates_disjoint_scores():
    out = np.arange(100, dtype=float)
    inside = np.arange(200, 300, dtype=float)
    t = best_threshold(out, inside, delta=1e-5, alpha=0.05)
    assert 99 < t < 200


def test_best_threshold_picks_the_clean_tail_of_a_mixture():
    # "in" world: half the runs look like "out", half sit far above it; the best cut is above all "out" runs.
    rng = np.random.default_rng(0)
    out = rng.normal(0, 1, 400)
    inside = np.concatenate([rng.normal(0, 1, 200), rng.normal(10, 1, 200)])
    t = best_threshold(out, inside, delta=1e-5, alpha=0.05)
    assert out.max() <= t < 7


def test_best_threshold_of_constant_scores_is_finite():
    assert math.isfinite(best_threshold(np.zeros(10), np.zeros(10), delta=1e-5, alpha=0.05))
