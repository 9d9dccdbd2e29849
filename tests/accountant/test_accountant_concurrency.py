"""Every backend: processes racing for one budget, crashes around a charge, lock contention (real processes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import dp_accounting as dpa
import pytest
from accountant_testlib import DELTA, MECH, N, budget_for, raw
from dp_accounting import rdp

from accountant import DEFAULT_ORDERS, BudgetExceeded, Ledger, LedgerUnavailable, event_rdp

pytestmark = pytest.mark.timeout(120)  # a hung child must fail the test, not the suite
CTX = mp.get_context("fork")
FIT = 40


def _racer(path: str, barrier, results) -> None:
    book = Ledger(path, create=False)
    barrier.wait()
    won = 0
    while True:
        try:
            book.charge(["a", "b"], caller=f"pid{os.getpid()}")
        except BudgetExceeded:
            break
        won += 1
    results.put(won)


def test_four_processes_race_get_exactly_m_successes(location):
    with Ledger(location) as book:
        book.create_scope("a", epsilon=budget_for(FIT), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(FIT + 5), delta=DELTA, mechanism=MECH, records=N)
    barrier, results = CTX.Barrier(4), CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(str(location), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    wins = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(wins) == FIT
    with Ledger(location, create=False) as book:
        assert book.status("a").queries_charged == FIT and book.status("b").queries_charged == FIT
        assert book.status("a").epsilon_spent == budget_for(FIT)  # the serial result, bit for bit
        assert book.verify().ok
        assert len({r.caller for r in book.history("a")}) >= 1 and len(book.history()) == 2 * FIT


def _charge_forever(path: str, done, reached, threshold: int) -> None:
    book = Ledger(path, create=False)
    while True:
        book.charge("big")
        done.value += 1  # single writer; lock-free so a SIGKILL cannot leave a lock held
        if done.value == threshold:
            reached.set()


@pytest.mark.parametrize("threshold", [1, 7, 25], ids=["after1", "after7", "after25"])
def test_kill_9_during_charging_loses_no_committed_spend(location, threshold):
    with Ledger(location) as book:
        book.create_scope("big", epsilon=budget_for(10**6), delta=DELTA, mechanism=MECH, records=N)
    done, reached = CTX.RawValue("q", 0), CTX.Event()
    child = CTX.Process(target=_charge_forever, args=(str(location), done, reached, threshold))
    child.start()
    assert reached.wait(timeout=120)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    with Ledger(location, create=False) as book:  # readable, consistent (open runs the full audit)
        charged = book.status("big").queries_charged
        assert done.value <= charged <= done.value + 1  # every returned charge is on disk
        assert book.verify().ok
        book.charge("big")  # and it still works
        assert book.status("big").queries_charged == charged + 1


def _charge_then_crash(path: str) -> None:
    Ledger(path, create=False).charge("a", purpose="crash before release")
    os._exit(0)  # crash between commit and release: no cleanup, no close


def test_crash_between_commit_and_release_keeps_the_spend(ledger, location):
    child = CTX.Process(target=_charge_then_crash, args=(str(location),))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    with Ledger(location, create=False) as book:
        assert book.status("a").queries_charged == 1
        assert book.history("a")[0].purpose == "crash before release"


def _die_inside_transaction(path: str, begin: str, ready) -> None:
    conn = raw(path)
    conn.execute(begin)
    conn.execute("INSERT INTO charges (group_id, time, scope, event, count) VALUES ('x', 0, 'a', '{}', 99)")
    conn.execute("UPDATE spend SET queries = 99 WHERE scope = 'a'")
    ready.set()
    signal.pause()  # killed here, transaction open


def test_kill_9_inside_an_open_write_transaction_rolls_it_back(ledger, location, backend):
    ledger.charge("a")
    ready = CTX.Event()
    child = CTX.Process(target=_die_inside_transaction, args=(str(location), backend.begin_write, ready))
    child.start()
    assert ready.wait(timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    with Ledger(location, create=False) as book:
        assert book.status("a").queries_charged == 1
        assert book.verify().ok
        book.charge("a")


def test_lock_held_by_another_writer_refuses_after_timeout(location, backend):
    with Ledger(location) as book:
        book.create_scope("a", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    holder = backend.hold_write_lock(location)
    book = Ledger(location, create=False, timeout=0.2)
    try:
        with pytest.raises(LedgerUnavailable, match=r"lock.*nothing was charged.*held the ledger lock.*retry later"):
            book.charge("a")
        holder.execute("ROLLBACK")
        book.charge("a")
        assert book.status("a").queries_charged == 1
    finally:
        book.close()
        holder.close()


def _event_racer(path: str, barrier, results) -> None:
    book = Ledger(path, create=False)
    barrier.wait()
    won = 0
    while True:
        try:
            book.charge("t", event=dpa.PoissonSampledDpEvent(0.03, dpa.GaussianDpEvent(1.2)))
        except BudgetExceeded:
            break
        won += 1
    results.put(won)


def test_processes_racing_with_training_events_get_exactly_what_the_filter_admits(location):
    event = dpa.PoissonSampledDpEvent(0.03, dpa.GaussianDpEvent(1.2))
    with Ledger(location) as book:
        alpha = book.create_scope("t", epsilon=3.0, delta=DELTA, mechanism=MECH, records=N).filter_order
    cost = event_rdp(event)[DEFAULT_ORDERS.index(alpha)]
    fit, total = 0, 0.0  # the ledger's own running float sum, event by event
    while rdp.compute_epsilon([alpha], [total + cost], DELTA)[0] <= 3.0:
        fit, total = fit + 1, total + cost
    assert 8 <= fit <= 400
    barrier, results = CTX.Barrier(4), CTX.Queue()
    procs = [CTX.Process(target=_event_racer, args=(str(location), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    wins = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(wins) == fit
    with Ledger(location, create=False) as book:
        assert book.status("t").events_charged == sum(wins) and book.verify().ok
