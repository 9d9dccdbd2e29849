"""The canary audit against the real mechanism: non-private settings fail, calibrated ones pass."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from accountant import calibrate_sigma
from pipeline.audit import AuditReport, run_audit
from pipeline.audit.canary import choose_canary, unit_rows
from pipeline.errors import PipelineInputError

TRIALS = 400  # per world; 200 of them evaluate the test: the best possible bound is log(200/3.7) ≈ 4.0


def test_sigma_zero_is_caught(embeddings, mechanism_rng):
    report = run_audit(
        k=5, q=1.0, sigma=0.0, delta=1e-5, trials=TRIALS, _rng=mechanism_rng, embeddings=embeddings
    )
    assert math.isinf(report.claimed_epsilon)
    assert report.empirical_epsilon_lower_bound > 3.0
    assert report.fpr == 0.0 and report.fnr == 0.0
    assert not report.passed


def test_forgotten_noise_exceeds_the_claim(embeddings, mechanism_rng):
    # Fault injection: the accountant charges for sigma = 1 (z = 5, claim 0.79) but the mechanism adds none.
    report = run_audit(
        k=10,
        q=1.0,
        sigma=1.0,
        delta=1e-5,
        trials=TRIALS,
        _rng=mechanism_rng,
        embeddings=embeddings,
        mechanism_sigma=0.0,
    )
    assert report.claimed_epsilon == pytest.approx(0.794522033, rel=1e-6)  # notes/accounting.md §2 G6
    assert report.empirical_epsilon_lower_bound > 3.0 > report.claimed_epsilon
    assert not report.passed


def test_subsampled_sigma_zero_still_leaks(embeddings, mechanism_rng):
    # q = 0.5: the canary is missed half the time, but every hit is certain: FPR ≈ 0 bounds ε ≥ log(0.5/FPR).
    report = run_audit(
        k=5, q=0.5, sigma=0.0, delta=1e-5, trials=TRIALS, _rng=mechanism_rng, embeddings=embeddings
    )
    assert report.empirical_epsilon_lower_bound > 2.0
    assert 0.3 < report.fnr < 0.7
    assert not report.passed


@pytest.mark.parametrize(
    ("k", "q", "sigma", "claim"),
    [(10, 1.0, 0.2, 4.728507067), (10, 1.0, 1.0, 0.794522033), (20, 0.1, 0.2, None)],
    ids=["z=1-claim-4.73", "z=5-claim-0.79", "subsampled"],
)
def test_calibrated_noise_passes(embeddings, mechanism_rng, k, q, sigma, claim):
    report = run_audit(
        k=k, q=q, sigma=sigma, delta=1e-5, trials=TRIALS, _rng=mechanism_rng, embeddings=embeddings
    )
    if claim is not None:  # plain Gaussian z = kσ/2 at δ = 1e-5: notes/accounting.md §2 G2 and G6
        assert report.claimed_epsilon == pytest.approx(claim, rel=1e-6)
    assert report.empirical_epsilon_lower_bound <= report.claimed_epsilon
    assert report.passed


@pytest.mark.parametrize("q", [1.0, 0.3], ids=["q=1", "q=0.3"])
def test_sigma_calibrated_by_the_accountant_passes_and_its_absence_fails(embeddings, q):
    sigma = calibrate_sigma(k=8, q=q, queries=1, epsilon=1.0, delta=1e-5)
    honest = run_audit(
        k=8, q=q, sigma=sigma, delta=1e-5, trials=TRIALS, _rng=np.random.default_rng(11), embeddings=embeddings
    )
    assert honest.claimed_epsilon == pytest.approx(1.0, abs=1e-3)
    assert honest.passed and honest.empirical_epsilon_lower_bound <= honest.claimed_epsilon
    broken = run_audit(
        k=8,
        q=q,
        sigma=sigma,
        delta=1e-5,
        trials=TRIALS,
        _rng=np.random.default_rng(11),
        embeddings=embeddings,
        mechanism_sigma=0.0,
    )
    assert broken.empirical_epsilon_lower_bound > 1.5 > broken.claimed_epsilon
    assert not broken.passed


def test_t_query_claim_grows_with_queries(embeddings, mechanism_rng):
    report = run_audit(
        k=10, q=0.1, sigma=0.5, delta=1e-6, trials=8, _rng=mechanism_rng, embeddings=embeddings, queries=1000
    )
    assert report.queries == 1000
    assert report.claimed_epsilon_queries > report.claimed_epsilon > 0


def test_report_is_json_and_names_its_randomness(embeddings):
    report = run_audit(k=5, q=1.0, sigma=0.0, delta=1e-5, trials=8, embeddings=embeddings)
    payload = report.to_dict()
    assert isinstance(report, AuditReport)
    assert payload["claimed_epsilon"] is None  # σ = 0: no finite claim, JSON null (not Infinity)
    assert payload["mechanism_rng"] == "secure"
    assert payload["trials"] == 8 and payload["evaluation_trials"] == 4
    for key in (
        "claimed_epsilon",
        "delta",
        "empirical_epsilon_lower_bound",
        "trials",
        "passed",
        "confidence",
        "claimed_epsilon_queries",
        "fpr",
        "fnr",
    ):
        assert key in payload
    json.loads(json.dumps(payload, allow_nan=False))


def test_same_seed_same_report(embeddings):
    first = run_audit(
        k=5, q=0.5, sigma=0.1, delta=1e-5, trials=50, _rng=np.random.default_rng(3), embeddings=embeddings
    )
    again = run_audit(
        k=5, q=0.5, sigma=0.1, delta=1e-5, trials=50, _rng=np.random.default_rng(3), embeddings=embeddings
    )
    assert first.to_dict() | {"seconds": 0} == again.to_dict() | {"seconds": 0}


def test_default_data_is_synthetic():
    report = run_audit(k=5, q=1.0, sigma=0.0, delta=1e-5, trials=8, _rng=np.random.default_rng(0))
    assert (report.records, report.dim) == (1000, 64)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": -3}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"q": 0.0}, "q must be in"),
        ({"q": 1.5}, "q must be in"),
        ({"q": float("nan")}, "q must be in"),
        ({"sigma": -0.1}, "sigma must be a finite number"),
        ({"sigma": float("inf")}, "sigma must be a finite number"),
        ({"delta": 0.0}, "delta must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"trials": 0}, "trials must be an integer >= 4"),
        ({"queries": 0}, "queries must be"),
        ({"confidence": 1.0}, "confidence must be"),
        ({"mechanism_sigma": -1.0}, "mechanism_sigma must be"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_parameters_raise_one_line_input_errors(changes, fragment):
    kwargs = {"k": 5, "q": 0.5, "sigma": 0.1, "delta": 1e-5, "trials": 8} | changes
    with pytest.raises(PipelineInputError, match=fragment) as info:
        run_audit(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (np.full((10, 8), np.nan), "NaN or infinite"),
        (np.zeros((10, 8)), "all-zero row"),
        (np.ones(8), "non-empty \\(n, d\\) matrix"),
        (np.ones((0, 8)), "non-empty"),
        (np.array([["a", "b"]]), "numeric"),
    ],
    ids=["nan", "zero-row", "1-d", "empty", "strings"],
)
def test_bad_embeddings_raise(bad, fragment):
    with pytest.raises(PipelineInputError, match=fragment):
        run_audit(k=5, q=0.5, sigma=0.1, delta=1e-5, trials=8, embeddings=bad)


def test_canary_is_far_from_the_data(embeddings):
    data = unit_rows(embeddings)
    canary = choose_canary(data, k=5, q=1.0, rng=np.random.default_rng(0))
    assert canary.kind == "antipode-of-mean"
    assert np.linalg.norm(canary.vector) == pytest.approx(1.0, abs=1e-5)
    assert (data @ canary.vector).max() < 0  # every record scores below an orthogonal canary's 0


def test_canary_orthogonal_when_the_data_do_not_span():
    rng = np.random.default_rng(1)
    half = rng.standard_normal((4, 40))
    # Mean exactly zero (no antipode); 8 rows span 4 of 40 dimensions.
    data = unit_rows(np.vstack([half, -half]))
    canary = choose_canary(data, k=5, q=1.0, rng=rng)
    assert canary.kind == "orthogonal-to-data"
    assert np.abs(data @ canary.vector).max() < 1e-5
