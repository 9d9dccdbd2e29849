"""Hypothesis properties: epsilon is monotone (up in T and q, down in sigma), calibration never overshoots,
n single charges equal one charge of count n, and refusal is monotone.

Examples are bounded (each new mechanism costs one ~30 ms dp-accounting compose; calibration ~0.5 s).
"""

from __future__ import annotations

import pytest
from accountant_testlib import DELTA, N, filter_epsilon_for
from hypothesis import given, settings
from hypothesis import strategies as st

from accountant import BudgetExceeded, Ledger, Mechanism, calibrate_sigma, epsilon_for, max_queries

ks = st.integers(min_value=1, max_value=40)
qs = st.floats(min_value=1e-3, max_value=1.0)
zs = st.floats(min_value=0.6, max_value=20.0)  # noise multipliers where no fractional order is dropped
counts = st.integers(min_value=1, max_value=100_000)
deltas = st.sampled_from([1e-5, 1e-6, 1e-8])


def mech(k: int, q: float, z: float) -> Mechanism:
    return Mechanism(k=k, q=q, sigma=2 * z / k)


@settings(max_examples=15)
@given(k=ks, q=qs, z=zs, t1=counts, t2=counts, delta=deltas)
def test_epsilon_non_decreasing_in_queries(k, q, z, t1, t2, delta):
    lo, hi = sorted((t1, t2))
    m = mech(k, q, z)
    assert epsilon_for(m, queries=lo, delta=delta) <= epsilon_for(m, queries=hi, delta=delta)


@settings(max_examples=10)
@given(k=ks, q1=qs, q2=qs, z=zs, t=counts)
def test_epsilon_non_decreasing_in_sampling_rate(k, q1, q2, z, t):
    lo, hi = sorted((q1, q2))
    assert epsilon_for(mech(k, lo, z), queries=t, delta=DELTA) <= epsilon_for(
        mech(k, hi, z), queries=t, delta=DELTA
    )


@settings(max_examples=10)
@given(k=ks, q=qs, z1=zs, z2=zs, t=counts)
def test_epsilon_non_increasing_in_sigma(k, q, z1, z2, t):
    lo, hi = sorted((z1, z2))
    assert epsilon_for(mech(k, q, hi), queries=t, delta=DELTA) <= epsilon_for(
        mech(k, q, lo), queries=t, delta=DELTA
    )


@settings(max_examples=3)
@given(
    k=ks,
    q=st.floats(min_value=1e-3, max_value=0.2),
    queries=st.integers(min_value=1, max_value=20_000),
    epsilon=st.floats(min_value=0.5, max_value=20.0),
    delta=deltas,
)
def test_calibrated_sigma_never_overshoots_and_is_tight(k, q, queries, epsilon, delta):
    sigma = calibrate_sigma(k=k, q=q, queries=queries, epsilon=epsilon, delta=delta)
    assert epsilon_for(Mechanism(k=k, q=q, sigma=sigma), queries=queries, delta=delta) <= epsilon
    assert epsilon_for(Mechanism(k=k, q=q, sigma=sigma * (1 - 1e-4)), queries=queries, delta=delta) > epsilon
    assert max_queries(Mechanism(k=k, q=q, sigma=sigma), epsilon=epsilon, delta=delta) >= queries


@settings(max_examples=10)
@given(n=st.integers(min_value=1, max_value=30), z=zs, q=qs)
def test_n_single_charges_equal_one_charge_of_count_n(backend, n, z, q):
    m = mech(8, q, z)
    path = backend.new("h")
    with Ledger(path) as book:
        budget = epsilon_for(m, queries=100, delta=DELTA)
        book.create_scope("single", epsilon=budget, delta=DELTA, mechanism=m, records=N)
        book.create_scope("batch", epsilon=budget, delta=DELTA, mechanism=m, records=N)
        for _ in range(n):
            book.charge("single")
        book.charge("batch", count=n)
        single, batch = book.status("single"), book.status("batch")
    assert single.epsilon_spent == batch.epsilon_spent == filter_epsilon_for(n, single.filter_order, m)
    assert single.epsilon_spent >= epsilon_for(m, queries=n, delta=DELTA)
    assert single.queries_remaining == batch.queries_remaining == 100 - n


@settings(max_examples=10)
@given(fit=st.integers(min_value=1, max_value=12), asks=st.lists(st.integers(1, 5), min_size=1, max_size=12))
def test_refusal_is_monotone(backend, fit, asks):
    """Once a charge of size c is refused, every later charge of size >= c is refused too."""
    m = Mechanism(k=18, q=0.01, sigma=0.2)
    path = backend.new("r")
    refused_at = None
    with Ledger(path) as book:
        book.create_scope(
            "s", epsilon=epsilon_for(m, queries=fit, delta=DELTA), delta=DELTA, mechanism=m, records=N
        )
        for size in asks:
            try:
                book.charge("s", count=size)
            except BudgetExceeded:
                refused_at = size if refused_at is None else min(refused_at, size)
            else:
                assert refused_at is None or size < refused_at
        assert book.status("s").queries_charged <= fit


@pytest.mark.parametrize("q", [1.0, 0.5, 0.01], ids=["q1", "q0.5", "q0.01"])
def test_event_kind_follows_q(q):
    event = Mechanism(k=4, q=q, sigma=1.0).dp_event()
    assert type(event).__name__ == ("GaussianDpEvent" if q == 1.0 else "PoissonSampledDpEvent")


@settings(max_examples=15)
@given(
    k=ks,
    q=qs,
    z=zs,
    charged=st.integers(min_value=0, max_value=20),
    target=st.integers(min_value=1, max_value=200),
    factor=st.floats(min_value=0.999, max_value=1.001),
)
def test_remaining_queries_matches_a_linear_count(k, q, z, charged, target, factor):
    """The closed-form-guided search equals counting one query at a time with the ledger's strict policy."""
    from accountant import event_rdp, remaining_queries, within_budget
    from accountant.budget import epsilon_and_order

    m = mech(k, q, z)
    vector = event_rdp(m.dp_event())
    budget = epsilon_for(m, queries=target, delta=DELTA) * factor
    count = 0
    while within_budget(epsilon_and_order(vector, charged + count + 1, delta=DELTA)[0], budget):
        count += 1
    if not within_budget(epsilon_and_order(vector, charged, delta=DELTA)[0], budget):
        count = 0
    assert remaining_queries(vector, charged, epsilon_budget=budget, delta=DELTA) == count
