"""Ledger behaviour on every backend: exact boundary refusal, persistence, multi-scope atomicity, inputs, read-only."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
from accountant_testlib import DELTA, MECH, N, budget_for, filter_epsilon_for, raw

from accountant import (
    AccountantInputError,
    BudgetExceeded,
    Ledger,
    LedgerUnavailable,
    Mechanism,
    Receipt,
    ScopeStatus,
    calibrate_sigma,
    epsilon_for,
)


def test_status_fields_before_and_after_charges(ledger):
    fresh = ledger.status("a")
    assert isinstance(fresh, ScopeStatus)
    assert (fresh.epsilon_spent, fresh.optimal_order, fresh.queries_charged, fresh.queries_remaining) == (
        0.0, None, 0, 10,
    )  # fmt: skip
    assert (fresh.k, fresh.q, fresh.sigma, fresh.noise_multiplier) == (18, 0.01, 0.2, pytest.approx(1.8))
    receipt = ledger.charge("a", caller="svc", purpose="unit test")
    assert isinstance(receipt, Receipt) and receipt.scopes == ("a",)
    assert receipt.lines[0].queries_charged == 1
    assert receipt.lines[0].epsilon_spent == epsilon_for(MECH, queries=1, delta=DELTA)
    after = ledger.status("a")
    assert after.queries_charged == 1 and after.queries_remaining == 9
    assert after.epsilon_spent == epsilon_for(MECH, queries=1, delta=DELTA)
    assert after.optimal_order is not None
    data = after.to_dict()
    for key in (
        "epsilon_budget",
        "delta",
        "epsilon_spent",
        "queries_charged",
        "queries_remaining",
        "k",
        "q",
        "sigma",
    ):
        assert key in data
    assert ledger.scopes() == ["a"] and ledger.mechanism("a") == MECH


def test_exact_boundary_mth_accepted_next_refused(ledger, location):
    """Strict policy: budget = epsilon after 10 queries admits exactly 10; the 11th is refused, nothing recorded."""
    for i in range(10):
        assert ledger.status("a").queries_remaining == 10 - i
        ledger.charge("a")
    status = ledger.status("a")
    assert status.epsilon_spent == status.epsilon_budget  # exactly at the boundary, accepted
    assert status.queries_remaining == 0
    with pytest.raises(
        BudgetExceeded, match=r"scope 'a' budget exhausted: 1 more query after 10 .* nothing was"
    ):
        ledger.charge("a")
    assert ledger.status("a").queries_charged == 10
    assert raw(location).execute("SELECT count(*) FROM charges").fetchone()[0] == 10


def test_budget_one_ulp_below_the_mth_admits_one_less(location):
    with Ledger(location) as book:
        book.create_scope(
            "s", epsilon=math.nextafter(budget_for(5), 0.0), delta=DELTA, mechanism=MECH, records=N
        )
        assert book.status("s").queries_remaining == 4
        for _ in range(4):
            book.charge("s")
        with pytest.raises(BudgetExceeded):
            book.charge("s")


def test_count_charge_refused_when_it_would_overshoot(ledger):
    ledger.charge("a", count=8)
    with pytest.raises(BudgetExceeded, match="3 more queries after 8"):
        ledger.charge("a", count=3)
    ledger.charge("a", count=2)
    assert ledger.status("a").queries_remaining == 0


def test_persistence_round_trip_equals_uninterrupted(backend):
    budget = budget_for(40)
    stop, straight_at = backend.new("stop"), backend.new("straight")
    with Ledger(stop) as book:
        book.create_scope("s", epsilon=budget, delta=DELTA, mechanism=MECH, records=N)
        for _ in range(7):
            book.charge("s")
    with Ledger(stop, create=False) as book:
        assert book.status("s").queries_charged == 7
        for _ in range(5):
            book.charge("s")
        resumed = book.status("s")
    with Ledger(straight_at) as book:
        book.create_scope("s", epsilon=budget, delta=DELTA, mechanism=MECH, records=N)
        for _ in range(12):
            book.charge("s")
        straight = book.status("s")
    # the filter's guarantee at its fixed order (issue 11), not the best order after the fact
    assert resumed.epsilon_spent == straight.epsilon_spent == filter_epsilon_for(12, straight.filter_order)
    assert resumed.epsilon_spent >= epsilon_for(MECH, queries=12, delta=DELTA)
    assert resumed.optimal_order == straight.optimal_order
    assert resumed.queries_remaining == straight.queries_remaining == 28


def test_multi_scope_charge_is_all_or_nothing(location):
    with Ledger(location) as book:
        book.create_scope("small", epsilon=budget_for(3), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("large", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
        receipts = [book.charge(["large", "small"], caller="q") for _ in range(3)]
        with pytest.raises(BudgetExceeded, match="scope 'small'"):
            book.charge(["large", "small"])
        assert book.status("large").queries_charged == 3  # the refused group recorded nothing
        with pytest.raises(AccountantInputError, match="scope 'nope' is not in ledger"):
            book.charge(["large", "nope"])
        assert book.status("large").queries_charged == 3
        book.charge("large")
        book.charge("large")
        with pytest.raises(BudgetExceeded):
            book.charge("large")
        rows = book.history()
    groups = {r.group_id for r in rows if r.caller == "q"}
    assert groups == {r.group_id for r in receipts} and len(groups) == 3
    assert [r.scope for r in rows[:2]] == ["large", "small"]
    assert len(book_history := rows) == 8 and all(r.count == 1 for r in book_history)


def test_history_filters_and_records_labels(ledger):
    ledger.charge("a", caller="alice", purpose="p1")
    ledger.charge("a")
    rows = ledger.history("a")
    assert [(r.caller, r.purpose) for r in rows] == [("alice", "p1"), (None, None)]
    assert rows[0].id < rows[1].id and rows[0].time <= rows[1].time
    assert rows[0].to_dict()["event"]["class_name"] == "PoissonSampledDpEvent"
    assert ledger.history("other") == []


def test_threads_race_exactly_m_successes(ledger):
    successes, refusals = [], []
    barrier = threading.Barrier(6)

    def worker():
        barrier.wait()
        for _ in range(5):
            try:
                ledger.charge("a", caller=threading.current_thread().name)
            except BudgetExceeded:
                refusals.append(1)
            else:
                successes.append(1)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(successes) == 10 and len(refusals) == 20
    assert ledger.status("a").queries_charged == 10
    assert ledger.verify().ok


def test_create_scope_with_queries_calibrates_sigma(location):
    with Ledger(location) as book:
        status = book.create_scope("s", epsilon=1.0, delta=1e-6, k=18, q=0.01, queries=300, records=10_000)
    assert status.sigma == calibrate_sigma(k=18, q=0.01, queries=300, epsilon=1.0, delta=1e-6)
    assert status.queries_remaining >= 300 and status.records == 10_000


CREATE_ERRORS = [
    ({"epsilon": 0.0}, "epsilon must be finite and > 0"),
    ({"epsilon": float("nan")}, "epsilon must be finite and > 0"),
    ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
    ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    ({"records": 1000, "delta": 1e-3}, r"delta=0.001 must be below 1/N = 0.001 .* N=1000"),
    ({"records": 0}, "records must be an integer >= 1"),
    ({"k": 4}, "pass either mechanism= or k/q"),
    ({"mechanism": None, "k": 4, "q": 0.1}, "pass exactly one of sigma or queries"),
    ({"mechanism": None, "k": 4}, "k and q are required"),
    (
        {"mechanism": None, "k": 4, "q": 0.1, "sigma": 1.0, "queries": 5},
        "pass exactly one of sigma or queries",
    ),
    ({"mechanism": Mechanism(k=1, q=1.0, sigma=0.01)}, "one query .* already costs"),
    ({"name": ""}, "scope name must be 1-200 printable characters"),
    ({"name": "a\nb"}, "scope name must be 1-200 printable characters"),
]


@pytest.mark.parametrize("override,message", CREATE_ERRORS, ids=[m[:40] for _, m in CREATE_ERRORS])
def test_create_scope_refuses_bad_input(location, override, message):
    params = {"name": "s", "epsilon": 1.0, "delta": 1e-6, "mechanism": MECH} | override
    name = params.pop("name")
    with Ledger(location) as book:
        with pytest.raises(AccountantInputError, match=message):
            book.create_scope(name, **params)
        assert book.scopes() == []


def test_existing_scope_name_is_refused(ledger):
    with pytest.raises(AccountantInputError, match="scope 'a' already exists .* use a new scope name"):
        ledger.create_scope(
            "a", epsilon=5.0, delta=1e-6, mechanism=Mechanism(k=4, q=0.5, sigma=1.0), records=N
        )
    assert ledger.mechanism("a") == MECH


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda b: b.charge([]), "distinct scope names"),
        (lambda b: b.charge(["a", "a"]), "distinct scope names"),
        (lambda b: b.charge("a", count=0), "count must be an integer >= 1"),
        (lambda b: b.charge("a", caller="x" * 501), "caller must be printable"),
        (lambda b: b.charge("a", purpose="two\nlines"), "purpose must be printable"),
        (lambda b: b.charge("zzz"), r"scope 'zzz' is not in ledger .*\(existing: a\)"),
        (lambda b: b.status("zzz"), "scope 'zzz' is not in ledger"),
    ],
    ids=[
        "empty",
        "duplicate",
        "count0",
        "long-caller",
        "newline-purpose",
        "unknown-charge",
        "unknown-status",
    ],
)
def test_charge_input_errors_record_nothing(ledger, call, message):
    with pytest.raises(AccountantInputError, match=message):
        call(ledger)
    assert ledger.status("a").queries_charged == 0


def test_missing_ledger_fails_closed_and_is_not_created(backend):
    absent = backend.new("absent")
    for kwargs in ({"create": False}, {"create": True, "read_only": True}):
        with pytest.raises(LedgerUnavailable, match=r"no ledger at .*\(fail closed\)"):
            Ledger(absent, **kwargs)
        assert not backend.exists(absent)


def test_new_ledger_in_missing_directory_is_an_input_error(tmp_path):
    with pytest.raises(AccountantInputError, match="ledger directory .* does not exist"):
        Ledger(tmp_path / "no" / "budget.sqlite")


def test_read_only_opening_reads_and_refuses_writes(ledger, location, backend):
    ledger.charge("a")
    with Ledger(location, read_only=True) as view:
        assert view.status("a").queries_charged == 1
        assert view.verify().ok
        with pytest.raises(AccountantInputError, match="opened read-only"):
            view.charge("a")
    if backend.name == "sqlite":
        assert oct(os.stat(location).st_mode & 0o777) == "0o600"


def test_closed_ledger_refuses(location):
    book = Ledger(location)
    book.close()
    with pytest.raises(LedgerUnavailable, match="was closed"):
        book.scopes()


def test_running_vector_is_count_times_per_query_vector(ledger, location):

    from accountant import event_rdp

    for _ in range(3):
        ledger.charge("a")
    blob = raw(location).execute("SELECT rdp FROM spend WHERE scope='a'").fetchone()[0]
    stored = np.frombuffer(blob, dtype="<f8")
    np.testing.assert_array_equal(stored, 3 * event_rdp(MECH.dp_event()))


def test_ledger_is_reopened_after_fork(ledger, location, backend):
    """A Ledger created before fork works in the child (fresh connection) and in the parent afterwards."""
    ledger.charge("a")
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            ledger.charge("a", caller="child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.charge("a", caller="parent")
    assert [r.caller for r in ledger.history("a")] == [None, "child", "parent"]
    assert backend.exists(location) and ledger.verify().ok
