"""The fixed-order Renyi filter (Feldman & Zrnic 2021) over heterogeneous events, delta at every charge, specs."""

from __future__ import annotations

import dp_accounting as dpa
import numpy as np
import pytest
from accountant_testlib import DELTA, MECH, N, budget_for, raw
from dp_accounting import rdp

from accountant import (
    DEFAULT_ORDERS,
    AccountantInputError,
    BudgetExceeded,
    DeltaRefused,
    Ledger,
    LedgerUnavailable,
    Mechanism,
    ScopeSpec,
    calibrate_noise_multiplier,
    calibrate_sigma,
    event_rdp,
    max_queries,
    recommended_delta,
)
from accountant.budget import filter_epsilon

TRAINING = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.02, dpa.GaussianDpEvent(1.5)), 200)


def _reference_rdp(event: dpa.DpEvent) -> np.ndarray:
    return (
        rdp.RdpAccountant(list(DEFAULT_ORDERS), dpa.NeighboringRelation.ADD_OR_REMOVE_ONE).compose(event).rdp
    )


@pytest.mark.parametrize(
    "mech,epsilon",
    [
        (MECH, budget_for(25)),
        (MECH, (budget_for(25) + budget_for(26)) / 2),
        (Mechanism(k=8, q=1.0, sigma=2.0), 3.0),
        (Mechanism(k=4, q=0.05, sigma=0.7), 4.0),
    ],
    ids=["boundary", "between", "plain-gaussian", "subsampled"],
)
def test_identical_queries_admit_exactly_todays_count(location, mech, epsilon):
    today = max_queries(mech, epsilon=epsilon, delta=DELTA)  # the multi-order, non-adaptive count
    assert 1 <= today < 10**6
    with Ledger(location) as book:
        created = book.create_scope("s", epsilon=epsilon, delta=DELTA, mechanism=mech, records=N)
        assert created.queries_remaining == today
        assert book.fits("s", count=today) and not book.fits("s", count=today + 1)
        book.charge("s", count=today)
        with pytest.raises(BudgetExceeded, match="budget exhausted"):
            book.charge("s")
        assert book.status("s").queries_remaining == 0 and book.status("s").queries_charged == today


def test_training_event_plus_queries_reports_compute_epsilon_at_the_filter_order(location):
    with Ledger(location) as book:
        created = book.create_scope("s", epsilon=8.0, delta=DELTA, mechanism=MECH, records=N, alpha=12.0)
        assert created.filter_order == 12.0
        receipt = book.charge("s", event=TRAINING, caller="finetune")
        for _ in range(3):
            receipt = book.charge("s")
        status = book.status("s")
    i = DEFAULT_ORDERS.index(12.0)
    summed = _reference_rdp(TRAINING)[i] + 3 * _reference_rdp(MECH.dp_event())[i]
    expected, order = rdp.compute_epsilon([12.0], [summed], DELTA)
    assert order == 12.0
    assert status.epsilon_spent == pytest.approx(expected, rel=1e-12, abs=0)
    assert status.rdp_spent == pytest.approx(summed, rel=1e-12)
    assert status.events_charged == 1 and status.queries_charged == 3
    assert receipt.statuses == (status,)  # computed inside the charge, equal to a fresh read
    with Ledger(location, create=False) as book:  # reopen: the audit replays the mixed log exactly
        assert book.verify().ok and book.status("s") == status
        assert [c.count for c in book.history("s")] == [1, 1, 1, 1]


def test_adaptive_sequence_halts_before_the_filter_sum_exceeds_the_budget(location):
    """Events whose noise is chosen from the state so far; the filter stops before sum RDP(alpha*) > B*."""
    epsilon = 2.0
    with Ledger(location) as book:
        alpha = book.create_scope("s", epsilon=epsilon, delta=DELTA, mechanism=MECH, records=N).filter_order
        i = DEFAULT_ORDERS.index(alpha)
        admitted, total, refused = [], 0.0, None
        for step in range(200):
            spent = book.status("s").rdp_spent
            # adaptive: the less budget is left, the less noise the analyst asks for (the worst case for a filter)
            z = max(0.5, 6.0 - 40.0 * spent) if step % 3 else 3.0
            event = (
                dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(z)) if step % 2 else dpa.GaussianDpEvent(z)
            )
            cost = float(_reference_rdp(event)[i])
            try:
                book.charge("s", event=event)
            except BudgetExceeded:
                refused = cost
                break
            admitted.append(cost)
            total += cost
        assert refused is not None and admitted
        assert filter_epsilon(total, order=alpha, delta=DELTA) <= epsilon  # everything admitted fits
        assert not filter_epsilon(total + refused, order=alpha, delta=DELTA) <= epsilon  # the next would not
        status = book.status("s")
        assert status.events_charged == len(admitted)
        assert status.rdp_spent == pytest.approx(total, rel=1e-9)
        assert status.rdp_spent <= status.rdp_budget * (1 + 1e-12)


def test_unsupported_event_is_refused_and_nothing_charged(ledger):
    for event in (
        dpa.LaplaceDpEvent(1.0),
        dpa.NonPrivateDpEvent(),
        dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0)]),
    ):
        with pytest.raises(AccountantInputError, match="unsupported privacy event"):
            ledger.charge("a", event=event)
    with pytest.raises(AccountantInputError, match="GaussianDpEvent inside"):
        ledger.charge("a", event=dpa.PoissonSampledDpEvent(0.5, dpa.LaplaceDpEvent(1.0)))
    assert ledger.history() == []


def test_scope_without_records_refuses_every_charge(location):
    with Ledger(location) as book:
        book.create_scope("s", epsilon=budget_for(10), delta=DELTA, mechanism=MECH)
        with pytest.raises(DeltaRefused, match="no record count N") as info:
            book.charge("s")
        assert info.value.exit_code == 3
        assert not book.fits("s")
        assert book.history() == [] and book.status("s").queries_charged == 0
        book.charge("s", records={"s": 500})  # the caller's current N makes it checkable
        assert book.status("s").queries_charged == 1


def test_records_grown_past_one_over_delta_are_refused(location):
    with Ledger(location) as book:
        book.create_scope("s", epsilon=budget_for(10), delta=1e-3, mechanism=MECH, records=500)
        book.charge("s")
        with pytest.raises(DeltaRefused, match=r"not below 1/N for its current record count") as err:
            book.charge("s", records={"s": 1000})
        assert "1000" not in str(err.value)  # the exact N of the private shard is never in the message
        assert not book.fits("s", records={"s": 2000}) and book.fits("s", records={"s": 999})
        assert book.status("s").queries_charged == 1 and len(book.history()) == 1


@pytest.mark.parametrize("records,expected", [(1, 0.1), (9, 0.01), (250, 1e-4), (1000, 1e-4), (1001, 1e-5)])
def test_recommended_delta_is_a_power_of_ten_at_most_a_tenth_of_one_over_n(records, expected):
    value = recommended_delta(records)
    assert value == expected and value <= 1 / (10 * records)


def test_create_scopes_is_all_or_none(location):
    good = ScopeSpec(name="a", epsilon=1.0, delta=DELTA, mechanism=MECH, records=N)
    bad = ScopeSpec(name="b", epsilon=1.0, delta=0.01, mechanism=MECH, records=N)  # delta >= 1/N
    with Ledger(location) as book:
        with pytest.raises(AccountantInputError, match="must be below 1/N"):
            book.create_scopes([good, bad])
        assert book.scopes() == []
        statuses = book.create_scopes(
            [good, ScopeSpec(name="c", epsilon=2.0, delta=DELTA, k=4, q=0.1, queries=50)]
        )
        assert [s.scope for s in statuses] == ["a", "c"] and book.scopes() == ["a", "c"]
        with pytest.raises(AccountantInputError, match="scope 'a' already exists"):
            book.create_scopes([ScopeSpec(name="d", epsilon=1.0, delta=DELTA, mechanism=MECH), good])
        assert book.scopes() == ["a", "c"]


def test_explicit_alpha_is_validated(location):
    with Ledger(location) as book:
        with pytest.raises(AccountantInputError, match="alpha must be a finite RDP order > 1.01"):
            book.create_scope("s", epsilon=1.0, delta=DELTA, mechanism=MECH, alpha=1.0)
        status = book.create_scope("s", epsilon=3.0, delta=DELTA, mechanism=MECH, alpha=12.25, records=N)
        assert status.filter_order == 12.25 and status.orders == len(DEFAULT_ORDERS) + 1


def test_calibrate_sigma_without_bracket_is_a_one_line_input_error():
    with pytest.raises(AccountantInputError, match="cannot calibrate sigma") as info:
        calibrate_sigma(k=2, q=1, queries=100000, epsilon=0.01, delta=1e-9)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("q,steps,epsilon", [(0.01, 1000, 3.0), (1.0, 10, 1.0), (0.2, 50, 8.0)])
def test_calibrate_noise_multiplier_never_overshoots(q, steps, epsilon):
    z = calibrate_noise_multiplier(q=q, steps=steps, epsilon=epsilon, delta=1e-6)
    inner = dpa.GaussianDpEvent(z)
    event = dpa.SelfComposedDpEvent(inner if q == 1 else dpa.PoissonSampledDpEvent(q, inner), steps)
    spent = rdp.compute_epsilon(DEFAULT_ORDERS, _reference_rdp(event), 1e-6)[0]
    assert spent <= epsilon
    lower = dpa.GaussianDpEvent(z * (1 - 1e-4))
    event = dpa.SelfComposedDpEvent(lower if q == 1 else dpa.PoissonSampledDpEvent(q, lower), steps)
    assert rdp.compute_epsilon(DEFAULT_ORDERS, _reference_rdp(event), 1e-6)[0] > epsilon  # and is tight


def test_event_rdp_of_training_matches_dp_accounting():
    assert np.array_equal(event_rdp(TRAINING), _reference_rdp(TRAINING))


def test_a_logged_event_beyond_the_filter_is_found_on_open(location):
    """A charge row and matching spend forged past the budget: the ordered replay finds it (exit 3)."""
    with Ledger(location) as book:
        book.create_scope("s", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=N)
        book.charge("s", event=dpa.GaussianDpEvent(50.0))
        book.charge("s", count=3)
        history = book.history("s")
    big = dpa.GaussianDpEvent(0.5)
    from accountant._rows import vector_to_blob
    from accountant.events import event_to_json

    conn = raw(location)
    conn.execute(
        "INSERT INTO charges (group_id, time, scope, event, count, caller, purpose) VALUES (?, ?, 's', ?, 1, NULL, NULL)",
        (history[0].group_id, history[0].time, event_to_json(big)),
    )
    extra = event_rdp(dpa.GaussianDpEvent(50.0)) + event_rdp(big)
    total = extra + 3 * event_rdp(MECH.dp_event())
    conn.execute(
        "UPDATE spend SET events = 2, extra = ?, rdp = ? WHERE scope = 's'",
        (vector_to_blob(extra), vector_to_blob(total)),
    )
    conn.close()
    with pytest.raises(LedgerUnavailable, match="exceeded the filter when it was made"):
        Ledger(location, create=False)


def test_initialise_checks_everything_first_and_leaves_no_file_on_refusal(location, backend):
    bad = [
        ScopeSpec(name="a", epsilon=1.0, delta=DELTA, mechanism=MECH, records=N),
        ScopeSpec(name="b", epsilon=1e-9, delta=DELTA, mechanism=MECH, records=N),  # not even one query fits
    ]
    with pytest.raises(AccountantInputError, match="scope 'b': one query"):
        Ledger.initialise(location, bad)
    assert not backend.exists(location)
    book, statuses = Ledger.initialise(location, bad[:1])
    with book:
        assert [s.scope for s in statuses] == ["a"] and book.created
    with pytest.raises(AccountantInputError, match="scope 'a' already exists"):
        Ledger.initialise(location, bad[:1])
    assert backend.exists(location)  # an existing ledger is never removed
