"""Group commit (``Ledger.charge_many``): one transaction for many charges, each all-or-none, checked in order."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from accountant_testlib import DELTA, MECH, N, budget_for

from accountant import (
    AccountantInputError,
    BudgetExceeded,
    ChargeRequest,
    DeltaRefused,
    Ledger,
    LedgerUnavailable,
    Receipt,
)


def test_group_admits_exactly_the_first_m_that_fit(ledger):
    outcomes = ledger.charge_many([ChargeRequest(scopes=("a",), caller=f"c{i}") for i in range(14)])
    assert [isinstance(o, Receipt) for o in outcomes] == [True] * 10 + [False] * 4
    assert all(isinstance(o, BudgetExceeded) for o in outcomes[10:])
    assert [o.statuses[0].queries_charged for o in outcomes[:10]] == list(range(1, 11))
    assert ledger.status("a").queries_charged == 10
    assert [r.caller for r in ledger.history("a")] == [f"c{i}" for i in range(10)]
    assert ledger.verify().ok


def test_group_equals_serial_charges(backend):
    serial = Ledger(backend.new("serial"))
    grouped = Ledger(backend.new("grouped"))
    for book in (serial, grouped):
        book.create_scope("a", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(4), delta=DELTA, mechanism=MECH, records=N)
    plan = [("a", "b"), ("a",), ("a", "b"), ("b",), ("a", "b"), ("a", "b"), ("a",)]
    expected = []
    for scopes in plan:
        try:
            expected.append(serial.charge(list(scopes)).statuses)
        except BudgetExceeded:
            expected.append(None)
    outcomes = grouped.charge_many([ChargeRequest(scopes=s) for s in plan])
    got = [o.statuses if isinstance(o, Receipt) else None for o in outcomes]
    assert [g is None for g in got] == [e is None for e in expected]
    for g, e in zip(got, expected, strict=True):
        if g is not None:
            assert [_budget(s) for s in g] == [_budget(s) for s in e]
    for scope in ("a", "b"):
        assert _budget(grouped.status(scope)) == _budget(serial.status(scope))
    assert grouped.verify().ok


def _budget(status):
    return (status.scope, status.queries_charged, status.queries_remaining, status.epsilon_spent)


def test_refused_request_in_the_middle_writes_nothing_of_itself(ledger):
    ledger.create_scope("tiny", epsilon=budget_for(1), delta=DELTA, mechanism=MECH, records=N)
    outcomes = ledger.charge_many(
        [
            ChargeRequest(scopes=("a", "tiny")),
            ChargeRequest(scopes=("a", "tiny")),  # tiny is spent: refused, 'a' not charged either
            ChargeRequest(scopes=("a",)),
            ChargeRequest(scopes=("nosuch",)),
            ChargeRequest(scopes=("a",), count=0),
            ChargeRequest(scopes=("a",), records={"a": int(1 / DELTA) + 1}),
        ]
    )
    assert isinstance(outcomes[0], Receipt) and isinstance(outcomes[2], Receipt)
    assert isinstance(outcomes[1], BudgetExceeded)
    assert isinstance(outcomes[3], AccountantInputError) and isinstance(outcomes[4], AccountantInputError)
    assert isinstance(outcomes[5], DeltaRefused)
    assert ledger.status("a").queries_charged == 2 and ledger.status("tiny").queries_charged == 1
    assert len({o.group_id for o in outcomes if isinstance(o, Receipt)}) == 2
    assert ledger.verify().ok


def test_locked_ledger_refuses_the_whole_group(ledger_path):
    book = Ledger(ledger_path, timeout=0.2)
    book.create_scope("a", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=N)
    blocker = sqlite3.connect(ledger_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable, match="charging a group"):
            book.charge_many([ChargeRequest(scopes=("a",)) for _ in range(3)])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert book.status("a").queries_charged == 0


def test_concurrent_groups_and_single_charges_race_exactly_m(ledger):
    successes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def grouped():
        barrier.wait()
        outcomes = ledger.charge_many([ChargeRequest(scopes=("a",)) for _ in range(5)])
        with lock:
            successes.extend(1 for o in outcomes if isinstance(o, Receipt))

    def single():
        barrier.wait()
        for _ in range(5):
            try:
                ledger.charge("a")
            except BudgetExceeded:
                continue
            with lock:
                successes.append(1)

    threads = [threading.Thread(target=f) for f in (grouped, grouped, single, single)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(successes) == 10
    assert ledger.status("a").queries_charged == 10
    assert ledger.verify().ok


def test_read_only_ledger_refuses_groups(ledger, location):
    with Ledger(location, read_only=True) as ro, pytest.raises(AccountantInputError, match="read-only"):
        ro.charge_many([ChargeRequest(scopes=("a",))])
