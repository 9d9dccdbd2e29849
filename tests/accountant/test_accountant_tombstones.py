"""Records that move keep their loss: retire -> tombstone, admit / create_scope(members=) -> carried W."""

from __future__ import annotations

import numpy as np
import pytest
from accountant_testlib import DELTA, MECH, N, budget_for, raw
from dp_accounting import rdp

from accountant import DEFAULT_ORDERS, BudgetExceeded, Ledger, LedgerUnavailable, event_rdp
from accountant._rows import on_grid, vector_to_blob


def _fits_with(carried: float, queries: int, order: float, epsilon: float) -> bool:
    c = event_rdp(MECH.dp_event())[DEFAULT_ORDERS.index(order)]
    return rdp.compute_epsilon([order], [carried + queries * c], DELTA)[0] <= epsilon


def test_retire_then_admit_into_another_scope_carries_the_loss(location):
    with Ledger(location) as book:
        book.create_scope("old", epsilon=budget_for(40), delta=DELTA, mechanism=MECH, records=N)
        book.charge("old", count=15)
        spent = book.status("old")
        assert book.retire("old", [1, 2, 3]) == 3
        epsilon = budget_for(30)
        new = book.create_scope(
            "new", epsilon=epsilon, delta=DELTA, mechanism=MECH, records=N, members=[2, 99]
        )
        alpha = new.filter_order
        carried = float((15 * event_rdp(MECH.dp_event()))[DEFAULT_ORDERS.index(alpha)])
        assert new.rdp_carried == pytest.approx(carried, rel=1e-12) and new.rdp_spent == new.rdp_carried
        assert new.epsilon_spent > 0.0 and spent.queries_charged == 15
        # queries are refused exactly when the carried loss plus the new charges would exceed the budget
        m = new.queries_remaining
        assert _fits_with(new.rdp_carried, m, alpha, epsilon) and not _fits_with(
            new.rdp_carried, m + 1, alpha, epsilon
        )
        assert m < 30  # the carried loss costs capacity (a fresh scope would admit 30)
        book.charge("new", count=m)
        with pytest.raises(BudgetExceeded):
            book.charge("new")
    with Ledger(location, create=False) as book:  # the admission log replays W exactly
        assert book.verify().ok and book.status("new").rdp_carried == new.rdp_carried


def test_admit_into_an_existing_scope_and_exhaustion(location):
    with Ledger(location) as book:
        book.create_scope("big", epsilon=budget_for(200), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("small", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
        book.charge("big", count=150)
        book.retire("big", np.array([7, 8], dtype=np.int64))
        before = book.status("small")
        assert book.admit("small", [5]).rdp_carried == 0.0  # no tombstone: nothing carried
        after = book.admit("small", [8])
        assert (
            after.rdp_carried > before.rdp_carried and after.queries_remaining == 0
        )  # W(alpha*) > B*: exhausted
        assert not book.fits("small")
        with pytest.raises(BudgetExceeded):
            book.charge("small")
        assert book.verify().ok


def test_tombstones_only_grow(location):
    with Ledger(location) as book:
        book.create_scope("a", epsilon=budget_for(100), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(100), delta=DELTA, mechanism=MECH, records=N)
        book.charge("a", count=20)
        book.charge("b", count=3)
        book.retire("a", [1])
        book.retire("b", [1])  # a smaller loss never lowers the tombstone
        book.create_scope("c", epsilon=budget_for(100), delta=DELTA, mechanism=MECH, records=N, members=[1])
        order = book.status("c").filter_order
        assert book.status("c").rdp_carried == pytest.approx(
            20 * event_rdp(MECH.dp_event())[DEFAULT_ORDERS.index(order)], rel=1e-12
        )


def test_tampered_carried_vector_is_refused(location):
    with Ledger(location) as book:
        book.create_scope("a", epsilon=budget_for(100), delta=DELTA, mechanism=MECH, records=N)
        book.charge("a", count=20)
        book.retire("a", [1])
        book.create_scope("b", epsilon=budget_for(100), delta=DELTA, mechanism=MECH, records=N, members=[1])
    conn = raw(location)
    zeros = vector_to_blob(np.zeros(len(DEFAULT_ORDERS)))
    conn.execute("UPDATE spend SET carried = ?, rdp = ? WHERE scope = 'b'", (zeros, zeros))
    conn.close()
    with pytest.raises(LedgerUnavailable, match="scope 'b' is inconsistent"):
        Ledger(location, create=False)


def test_on_grid_bounds_by_the_next_larger_order():
    vector = np.array([1.0, 2.0, 4.0])
    assert np.array_equal(on_grid(vector, (2.0, 4.0, 8.0), (2.0, 4.0, 8.0)), vector)
    assert np.array_equal(on_grid(vector, (2.0, 4.0, 8.0), (1.5, 3.0, 8.0, 9.0)), [1.0, 2.0, 4.0, np.inf])
