"""PostgreSQL ledger drills: 8 processes race for one budget, kill -9 mid-charge, sessions terminated mid-charge.

Real processes (fork), a real PostgreSQL server on loopback (``tests/pg_cluster.py``, one per session), real
SIGKILL and ``pg_terminate_backend`` from another connection. Skipped only when no PostgreSQL binaries exist.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pg_cluster
import pytest

from accountant import BudgetExceeded, Ledger, LedgerUnavailable, Mechanism, epsilon_for

pytestmark = pytest.mark.timeout(240)
CTX = mp.get_context("fork")
MECH = Mechanism(k=18, q=0.01, sigma=0.2)
DELTA, N = 1e-7, 1000
RACERS, FIT = 8, 48


@pytest.fixture
def url() -> str:
    server = pg_cluster.shared_server()
    if server is None:
        pytest.skip(pg_cluster.SKIP_REASON)
    return server.ledger_url("drill")


def _scope(url: str, queries: int) -> None:
    with Ledger(url) as book:
        book.create_scope(
            "s",
            epsilon=epsilon_for(MECH, queries=queries, delta=DELTA),
            delta=DELTA,
            mechanism=MECH,
            records=N,
        )


def _admin(url: str):
    import psycopg

    return psycopg.connect(url.split("?", 1)[0], autocommit=True)


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def _racer(url: str, barrier, results) -> None:
    book = Ledger(url, create=False, timeout=120)
    barrier.wait()
    won = 0
    while True:
        try:
            book.charge("s", caller=f"pid{os.getpid()}")
        except BudgetExceeded:
            break
        won += 1
    results.put(won)


def test_eight_processes_racing_on_one_scope_get_exactly_the_budget(url, drill_counts):
    _scope(url, FIT)
    barrier, results = CTX.Barrier(RACERS), CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(url, barrier, results)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    wins = [results.get(timeout=200) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(wins) == FIT
    with Ledger(url, create=False) as book:
        status = book.status("s")
        assert status.queries_charged == FIT and status.queries_remaining == 0
        assert status.epsilon_spent == epsilon_for(MECH, queries=FIT, delta=DELTA)  # the serial result
        assert book.verify().ok and len(book.history("s")) == FIT
        assert len({c.caller for c in book.history("s")}) > 1  # they really raced
    drill_counts["pg ledger races (8 processes)"] += 1


def _charge_forever(url: str, done, reached, threshold: int) -> None:
    book = Ledger(url, create=False)
    while True:
        book.charge("s")
        done.value += 1
        if done.value == threshold:
            reached.set()


@pytest.mark.parametrize("threshold", [1, 9, 30], ids=["after1", "after9", "after30"])
def test_kill_9_while_charging_loses_no_committed_charge(url, threshold, drill_counts):
    _scope(url, 10**6)
    done, reached = CTX.RawValue("q", 0), CTX.Event()
    child = CTX.Process(target=_charge_forever, args=(url, done, reached, threshold))
    child.start()
    assert reached.wait(timeout=120)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    with Ledger(url, create=False) as book:  # open replays the whole log
        charged = book.status("s").queries_charged
        assert done.value <= charged <= done.value + 1  # every returned charge is committed
        assert book.verify().ok
        book.charge("s")
        assert book.status("s").queries_charged == charged + 1
    drill_counts["pg ledger kill -9 while charging"] += 1


def _charge_once(url: str, outcome) -> None:
    book = Ledger(url, create=False, timeout=120)
    try:
        book.charge("s", purpose="drill")
    except LedgerUnavailable as err:
        _report(outcome, ("unavailable", err.exit_code, str(err)))
        os._exit(err.exit_code)
    _report(outcome, ("charged", 0, ""))
    os._exit(0)


def _report(queue, item) -> None:
    queue.put(item)
    queue.close()
    queue.join_thread()  # flushed before os._exit


def _wait_for_lock_waiter(admin, schema_hint: str) -> int:
    """The pid of the dprdm session blocked on the row lock (i.e. inside its charge transaction)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'dprdm-ledger' AND wait_event_type = 'Lock'"
        ).fetchone()
        if row:
            return row[0]
        time.sleep(0.02)
    raise AssertionError(f"no charge of {schema_hint} blocked on the row lock")


def _hold_row_lock(url: str):
    holder = _admin(url)
    holder.execute(f'SET search_path TO "{_schema(url)}"')
    holder.execute("BEGIN")
    holder.execute("SELECT scope FROM spend WHERE scope = 's' FOR UPDATE")
    return holder


def test_kill_9_inside_the_charge_transaction_rolls_it_back(url, drill_counts):
    _scope(url, 20)
    with Ledger(url, create=False) as book:
        book.charge("s", count=3)
    holder = _hold_row_lock(url)
    child = CTX.Process(target=_charge_once, args=(url, CTX.Queue()))
    child.start()
    admin = _admin(url)
    _wait_for_lock_waiter(admin, url)  # the child is inside BEGIN ... FOR UPDATE, mid-charge
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    holder.execute("ROLLBACK")
    holder.close()
    with Ledger(url, create=False, timeout=10) as book:
        assert book.status("s").queries_charged == 3 and book.verify().ok
        book.charge("s")  # no lock left behind
        assert book.status("s").queries_charged == 4
    admin.close()
    drill_counts["pg ledger kill -9 inside a charge transaction"] += 1


def test_session_terminated_during_a_charge_refuses_with_exit_3(url, drill_counts):
    _scope(url, 20)
    with Ledger(url, create=False) as book:
        book.charge("s", count=2)
    holder = _hold_row_lock(url)
    outcome = CTX.Queue()
    child = CTX.Process(target=_charge_once, args=(url, outcome))
    child.start()
    admin = _admin(url)
    pid = _wait_for_lock_waiter(admin, url)
    assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    kind, code, message = outcome.get(timeout=60)
    child.join(timeout=60)
    holder.execute("ROLLBACK")
    holder.close()
    admin.close()
    assert (kind, code, child.exitcode) == ("unavailable", 3, 3)
    assert "nothing was charged" in message and "\n" not in message
    with Ledger(url, create=False) as book:
        assert book.status("s").queries_charged == 2 and book.verify().ok  # never charged, never guessed
        assert all(c.purpose is None for c in book.history("s"))
    drill_counts["pg ledger sessions terminated mid-charge (exit 3)"] += 1


def _charge_and_count(url: str, ready, stop, outcome) -> None:
    book = Ledger(url, create=False)
    ready.set()
    charged = refused = ambiguous = 0
    while not stop.is_set():
        try:
            book.charge("s")
        except LedgerUnavailable as err:
            refused += 1
            ambiguous += "during COMMIT" in str(err)
        else:
            charged += 1
    outcome.put((charged, refused, ambiguous))


def test_sessions_terminated_at_random_points_never_undercount(url, drill_counts):
    """Terminate the charging session 25 times at arbitrary points: the ledger holds every returned charge and
    nothing else, except charges whose COMMIT outcome the client was told is unknown (counted, never lost)."""
    _scope(url, 10**6)
    ready, stop, outcome = CTX.Event(), CTX.Event(), CTX.Queue()
    child = CTX.Process(target=_charge_and_count, args=(url, ready, stop, outcome))
    child.start()
    assert ready.wait(timeout=60)
    admin = _admin(url)
    terminated = 0
    for _ in range(25):
        time.sleep(0.03)
        terminated += admin.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'dprdm-ledger' AND pid <> pg_backend_pid()) t"
        ).fetchone()[0]
    stop.set()
    charged, refused, ambiguous = outcome.get(timeout=60)
    child.join(timeout=60)
    admin.close()
    assert child.exitcode == 0 and terminated >= 1 and refused >= 1
    with Ledger(url, create=False) as book:
        recorded = book.status("s").queries_charged
        assert charged <= recorded <= charged + ambiguous and book.verify().ok
    drill_counts["pg ledger random session terminations"] += terminated
    drill_counts["pg ledger charges refused after a termination (exit 3)"] += refused
    drill_counts["pg ledger charges lost at COMMIT, counted as spent"] += ambiguous
