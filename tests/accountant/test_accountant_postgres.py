"""What only the PostgreSQL ledger has: URLs, passwords, migrations rows, lock order, lost connections, no driver.

Runs against the session's real server (``tests/pg_cluster.py``); skipped only when no PostgreSQL binaries exist.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from accountant_testlib import DELTA, MECH, Backend, N, budget_for, pg_server_or_skip, raw

from accountant import AccountantInputError, BudgetExceeded, Ledger, LedgerUnavailable, ScopeSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg(tmp_path: Path) -> Backend:
    return Backend(name="postgres", tmp=tmp_path, server=pg_server_or_skip())


def test_location_never_shows_the_password(pg):
    url = pg.new("pw").replace("postgres@", "postgres:s3cret-pw@")  # trust auth: any password is accepted
    with Ledger(url) as book:
        assert book.location == url.replace(":s3cret-pw", "") and book.path is None
        assert "s3cret" not in book.verify().path
    down = "postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres?schema=x&connect_timeout=2"
    with pytest.raises(LedgerUnavailable, match="nothing was charged; the connection .* lost or refused") as info:
        Ledger(down, timeout=2)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value) and info.value.exit_code == 3


def test_migrations_are_recorded_and_the_schema_is_the_ledger(pg):
    url = pg.new("mig")
    with Ledger(url) as book:
        ledger_id = book.ledger_id
    conn = raw(url)
    assert [r[0] for r in conn.execute("SELECT version FROM dprdm_migrations ORDER BY version")] == [1, 2]
    conn.close()
    with Ledger(url, create=False, read_only=True) as book:
        assert book.ledger_id == ledger_id and book.verify().schema_version == 2
        with pytest.raises(AccountantInputError, match="opened read-only"):
            book.charge("a")
    with Ledger(pg.new("other")) as other:
        assert other.ledger_id != ledger_id  # one ledger per schema


def test_failed_initialise_drops_what_it_created_and_nothing_else(pg):
    bad = [
        ScopeSpec(name="a", epsilon=1.0, delta=DELTA, mechanism=MECH, records=N),
        ScopeSpec(name="b", epsilon=1e-9, delta=DELTA, mechanism=MECH, records=N),
    ]
    url = pg.new("init")
    with pytest.raises(AccountantInputError, match="scope 'b': one query"):
        Ledger.initialise(url, bad)
    assert not pg.exists(url)
    empty = pg.new("empty")  # a schema the DBA made for the ledger: kept, only the tables go
    conn = raw(empty)
    conn.execute(f'CREATE SCHEMA "{conn.schema}"')
    conn.close()
    book = Ledger(empty)
    assert book.created and book.discard()
    assert pg.exists(empty) and pg.fingerprint(empty) == pg.fingerprint(pg.new("never"))


def test_foreign_tables_in_the_schema_are_refused_not_adopted(pg):
    url = pg.new("foreign")
    conn = raw(url)
    conn.execute(f'CREATE SCHEMA "{conn.schema}"')
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.close()
    with pytest.raises(LedgerUnavailable, match="is not a dprdm ledger"):
        Ledger(url)


def test_opposite_scope_orders_never_deadlock(pg):
    """Rows are locked in name order whatever order the caller lists the scopes in."""
    url = pg.new("order")
    with Ledger(url) as book:
        book.create_scope("a", epsilon=budget_for(60), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(60), delta=DELTA, mechanism=MECH, records=N)
    book = Ledger(url, create=False, timeout=60)
    wins, errors = [], []
    barrier = threading.Barrier(6)

    def worker(order: list[str]) -> None:
        barrier.wait()
        while True:
            try:
                book.charge(order)
            except BudgetExceeded:
                return
            except Exception as err:  # a deadlock would surface here as LedgerUnavailable
                errors.append(err)
                return
            wins.append(1)

    threads = [threading.Thread(target=worker, args=(["a", "b"] if i % 2 else ["b", "a"],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(wins) == 60
    assert book.status("a").queries_charged == book.status("b").queries_charged == 60 and book.verify().ok
    book.close()


def test_a_terminated_session_refuses_then_the_next_call_reconnects(pg):
    url = pg.new("term")
    with Ledger(url) as book:
        book.create_scope("a", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    book = Ledger(url, create=False)
    book.charge("a")
    killer = raw(url)
    killer.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dprdm-ledger'")
    with pytest.raises(LedgerUnavailable, match="nothing was charged; the connection .* lost") as info:
        book.charge("a")
    assert info.value.exit_code == 3
    assert book.charge("a").lines[0].queries_charged == 2  # a fresh connection; nothing was double-charged
    killer.close()
    book.close()


def test_without_psycopg_a_url_is_a_one_line_install_hint(pg):
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from accountant import Ledger, AccountantInputError\n"
        "try:\n    Ledger(sys.argv[1])\n"
        "except AccountantInputError as err:\n    print(err); raise SystemExit(err.exit_code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, pg.new("nodriver")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().count("\n") == 0 and "pip install 'dprdm[scale]'" in done.stdout
