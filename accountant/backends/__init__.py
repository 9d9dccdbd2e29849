"""Storage backends of the ledger: the seam between :class:`accountant.Ledger` and a database (issue 14).

A backend owns the connection(s), the transaction discipline, the schema DDL with its ordered migrations and
the translation of driver errors into :class:`accountant.LedgerUnavailable`. The ledger facade issues portable
SQL through the connection a backend yields (``?`` placeholders, no engine-specific functions); a PostgreSQL
backend (psycopg) rewrites placeholders, takes ``SELECT ... FOR UPDATE``/advisory locks where SQLite takes
``BEGIN IMMEDIATE``, and reports a URL as its ``location``. Only SQLite exists today.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from accountant.backends.sqlite import SCHEMA_VERSION, SqliteBackend, ledger_path

__all__ = ["SCHEMA_VERSION", "LedgerBackend", "SqliteBackend", "ledger_path"]


class LedgerBackend(Protocol):
    """What the ledger needs from a database.

    Attributes:
        location: where the ledger lives (a file path for SQLite, a URL for PostgreSQL).
        created: whether this backend object created the ledger (for :meth:`discard`).
    """

    location: str
    created: bool

    def transaction(self, action: str) -> AbstractContextManager[Any]:
        """One serialised write transaction (the whole read-check-write of a charge); rolls back on error."""

    def snapshot(self, action: str) -> AbstractContextManager[Any]:
        """A consistent read transaction for multi-statement reads."""

    def read(self, action: str, sql: str, params: tuple = ()) -> list[tuple]:
        """One read statement; all rows."""

    def ledger_id(self) -> str:
        """The ledger's identity (uuid4 hex written at creation or migration)."""

    def discard(self, owned_scopes: frozenset[str]) -> bool:
        """Close; delete the ledger only if this object created it and it holds only ``owned_scopes``."""

    def close(self) -> None:
        """Release the connections."""
