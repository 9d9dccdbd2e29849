"""A schema-v1 ledger (v1 DDL + rows as dprdm 0.1 wrote them) opens, migrates to v2 and keeps its capacity."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import dp_accounting as dpa
import pytest
from accountant_testlib import DELTA, MECH, budget_for

from accountant import DEFAULT_ORDERS, BudgetExceeded, Ledger, LedgerUnavailable, event_rdp, remaining_queries
from accountant._rows import vector_to_blob
from accountant.backends.sqlite import _V1, APPLICATION_ID
from accountant.events import event_to_json


def _v1_event(mech):
    """The query event exactly as v1 logged it: the textbook multiplier sigma*k/2."""
    gaussian = dpa.GaussianDpEvent(mech.sigma * mech.k / 2.0)
    return gaussian if mech.q == 1.0 else dpa.PoissonSampledDpEvent(mech.q, gaussian)


def _write_v1(path, scopes):
    """scopes: name -> (epsilon, records, queries charged). Returns each scope's v1 remaining count."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    for statement in _V1:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    remaining = {}
    v1_vector = event_rdp(_v1_event(MECH))
    for name, (epsilon, records, charged) in scopes.items():
        conn.execute(
            "INSERT INTO scopes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                epsilon,
                DELTA,
                MECH.k,
                MECH.q,
                MECH.sigma,
                "ADD_OR_REMOVE_ONE",
                json.dumps(list(DEFAULT_ORDERS)),
                "0.6.0",
                records,
                time.time(),
            ),
        )
        conn.execute(
            "INSERT INTO spend VALUES (?, ?, ?)", (name, charged, vector_to_blob(charged * v1_vector))
        )
        for _ in range(charged):
            conn.execute(
                "INSERT INTO charges (group_id, time, scope, event, count, caller, purpose) VALUES (?, ?, ?, ?, 1, ?, ?)",
                ("g" * 32, time.time(), name, event_to_json(_v1_event(MECH)), "v1", None),
            )
        remaining[name] = remaining_queries(v1_vector, charged, epsilon_budget=epsilon, delta=DELTA)
    conn.execute("COMMIT")
    conn.close()
    return remaining


def test_v1_ledger_migrates_and_keeps_exactly_its_admissible_queries(ledger_path):
    before = _write_v1(
        ledger_path,
        {
            "a": (budget_for(30), 1000, 4),
            "b": ((budget_for(30) + budget_for(31)) / 2, 1000, 0),
            "c": (budget_for(12), None, 12),
        },
    )
    assert before == {"a": 26, "b": 30, "c": 0}
    with pytest.raises(LedgerUnavailable, match="needs a migration to v2, which a read-only open cannot do"):
        Ledger(ledger_path, create=False, read_only=True)
    with Ledger(ledger_path, create=False) as book:
        assert re.fullmatch("[0-9a-f]{32}", book.ledger_id) and book.location == str(ledger_path)
        report = book.verify()
        assert report.ok and report.schema_version == 2
        for name, left in before.items():
            status = book.status(name)
            assert status.queries_remaining == left and status.filter_order in DEFAULT_ORDERS
        ledger_id = book.ledger_id
        book.charge("a", count=26)
        with pytest.raises(BudgetExceeded):
            book.charge("a")
        book.charge("b", count=30)
        with pytest.raises(BudgetExceeded):
            book.charge("b")
        assert len(book.history("a")) == 5  # the v1 rows are kept, append-only
    with Ledger(ledger_path, create=False, read_only=True) as book:  # migrated once, readable read-only after
        assert book.ledger_id == ledger_id and book.verify().ok
        assert book.status("a").queries_charged == 30


def test_new_ledger_has_an_id_and_a_filter_order(ledger_path):
    with Ledger(ledger_path) as book:
        status = book.create_scope("s", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=1000)
        first = book.ledger_id
    with Ledger(ledger_path, create=False, read_only=True) as book:
        assert book.ledger_id == first
    assert status.filter_order in DEFAULT_ORDERS and status.rdp_budget > 0
