"""Shared helpers of the accountant tests (a uniquely named module, importable from every test file here)."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from dp_accounting import rdp

from accountant import DEFAULT_ORDERS, Ledger, Mechanism, epsilon_for, event_rdp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: pg_cluster
import pg_cluster  # noqa: E402

DELTA = 1e-7
#: Records N of every test scope (delta < 1/N is checked at every charge).
N = 1000
#: The DP-RDM regression mechanism (k=18, q=0.01, sigma=0.2 -> z=1.8); its per-query RDP vector is cached.
MECH = Mechanism(k=18, q=0.01, sigma=0.2)
TABLES = ("scopes", "charges", "spend", "meta", "tombstones", "admissions")


def budget_for(queries: int, mechanism: Mechanism = MECH, delta: float = DELTA) -> float:
    """The epsilon after exactly ``queries`` queries: as a budget it admits exactly that many (strict policy)."""
    return epsilon_for(mechanism, queries=queries, delta=delta)


def pg_server_or_skip() -> pg_cluster.PgServer:
    """The session's PostgreSQL server; skips the test (with the reason) only when no binaries exist."""
    server = pg_cluster.shared_server()
    if server is None:
        pytest.skip(pg_cluster.SKIP_REASON)
    return server


class _PgRaw:
    """A second, independent autocommit psycopg connection to a ledger schema that accepts ``?`` placeholders."""

    def __init__(self, url: str) -> None:
        import psycopg

        parts = urlsplit(url)
        schema = dict(parse_qsl(parts.query)).get("schema", "dprdm")
        self.conn = psycopg.connect(parts._replace(query="").geturl(), autocommit=True)
        self.conn.execute(f'SET search_path TO "{schema}"')
        self.schema = schema

    def execute(self, statement: str, params: Any = None) -> Any:
        if params is None:
            return self.conn.execute(statement)
        return self.conn.execute(statement.replace("?", "%s"), tuple(params))

    def close(self) -> None:
        self.conn.close()


def raw(location: Path | str) -> Any:
    """A second, independent autocommit connection (for tampering and lock contention), for either backend."""
    if isinstance(location, str) and location.startswith("postgresql://"):
        return _PgRaw(location)
    return sqlite3.connect(str(location), isolation_level=None, timeout=5)


@dataclass(frozen=True)
class Backend:
    """One ledger backend under test: fresh locations, existence, a content fingerprint, lock holding."""

    name: str
    tmp: Path
    server: pg_cluster.PgServer | None = None

    def new(self, tag: str = "budget") -> Path | str:
        """A fresh ledger location (nothing there yet)."""
        if self.name == "sqlite":
            return self.tmp / f"{tag}-{uuid.uuid4().hex[:8]}.sqlite"
        return self.server.ledger_url(tag)

    def exists(self, location: Path | str) -> bool:
        """Whether anything exists at ``location`` (a file; a schema)."""
        if self.name == "sqlite":
            return Path(location).exists()
        conn = raw(location)
        try:
            return bool(
                conn.execute(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = ?", (conn.schema,)
                ).fetchone()[0]
            )
        finally:
            conn.close()

    def fingerprint(self, location: Path | str) -> str:
        """A digest of the stored ledger (file bytes; every row of every table and the migration records)."""
        if self.name == "sqlite":
            return hashlib.sha256(Path(location).read_bytes()).hexdigest()
        conn = raw(location)
        digest = hashlib.sha256()
        try:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1",
                (conn.schema,),
            ).fetchall()
            for (table,) in tables:
                digest.update(table.encode())
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
                    digest.update(repr(row).encode())
        finally:
            conn.close()
        return digest.hexdigest()

    def hold_write_lock(self, location: Path | str) -> Any:
        """A second connection holding the lock a charge needs (SQLite: the write lock; PostgreSQL: the rows)."""
        conn = raw(location)
        if self.name == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        else:
            conn.execute("BEGIN")
            conn.execute("SELECT scope FROM spend FOR UPDATE")
        return conn

    @property
    def begin_write(self) -> str:
        return "BEGIN IMMEDIATE" if self.name == "sqlite" else "BEGIN"


def filter_epsilon_for(
    queries: int, order: float, mechanism: Mechanism = MECH, delta: float = DELTA
) -> float:
    """The fixed-order filter's epsilon after ``queries`` queries at ``order`` (an independent recomputation)."""
    vector = event_rdp(mechanism.dp_event())
    return float(rdp.compute_epsilon([order], [queries * vector[DEFAULT_ORDERS.index(order)]], delta)[0])


def build_sample(location: Path | str) -> Path | str:
    """A closed ledger with two scopes and a few charges."""
    with Ledger(location) as book:
        book.create_scope("a", epsilon=budget_for(50), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(50), delta=DELTA, mechanism=MECH, records=1000)
        for _ in range(3):
            book.charge(["a", "b"], caller="test", purpose="fixture")
        book.charge("a")
    return location
