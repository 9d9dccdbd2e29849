"""Storage backends of the ledger: the seam between :class:`accountant.Ledger` and a database (issue 14).

A backend owns the connection(s), the transaction discipline and locking, the schema DDL with its ordered
migrations (shared, dialect-rendered: ``accountant.backends._schema``) and the translation of driver errors into
:class:`accountant.LedgerUnavailable`. The ledger facade issues portable SQL through the connection a backend
yields (``?`` placeholders, no engine-specific functions).

* :class:`SqliteBackend` (``accountant.backends.sqlite``): a file; ``BEGIN IMMEDIATE`` serialises writers.
* ``PostgresBackend`` (``accountant.backends.postgres``, needs ``dprdm[scale]``): a ``postgresql://`` URL;
  ``SELECT ... FOR UPDATE`` on the charged scopes' rows, in name order, plus an advisory lock for scope creation
  and record moves. Imported only when a URL is opened, so psycopg stays optional.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, Protocol

from accountant.backends._schema import SCHEMA_VERSION, FilterOrderFn
from accountant.backends.sqlite import SqliteBackend, ledger_path

__all__ = [
    "SCHEMA_VERSION",
    "LedgerBackend",
    "SqliteBackend",
    "is_postgres_url",
    "ledger_path",
    "open_backend",
]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL ledger (a ``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(location, str) and location.startswith(_URL_SCHEMES)


class LedgerBackend(Protocol):
    """What the ledger needs from a database.

    Attributes:
        location: where the ledger lives (a file path for SQLite, a URL without password for PostgreSQL).
        path: the ledger file (None for a database server).
        created: whether this backend object created the ledger (for :meth:`discard`).
    """

    location: str
    path: os.PathLike[str] | None
    created: bool

    def transaction(
        self, action: str, *, scopes: tuple[str, ...] | list[str] = (), exclusive: bool = False
    ) -> AbstractContextManager[Any]:
        """One write transaction (the whole read-check-write of a charge); rolls back on error.

        Writers of the same ``scopes`` are serialised; ``exclusive`` also serialises it against every other
        exclusive transaction (scope creation, admissions, retirements).
        """

    def snapshot(self, action: str) -> AbstractContextManager[Any]:
        """A consistent read transaction for multi-statement reads."""

    def read(self, action: str, sql: str, params: tuple = ()) -> list[tuple]:
        """One read statement; all rows."""

    def integrity(self, conn: Any) -> str:
        """'ok' or the storage-level damage found (inside a snapshot)."""

    def ledger_id(self) -> str:
        """The ledger's identity (uuid4 hex written at creation or migration)."""

    def discard(self, owned_scopes: frozenset[str]) -> bool:
        """Close; delete the ledger only if this object created it and it holds only ``owned_scopes``."""

    def close(self) -> None:
        """Release the connections."""


def open_backend(
    location: str | os.PathLike[str],
    *,
    create: bool,
    read_only: bool,
    timeout: float,
    filter_order: FilterOrderFn,
) -> LedgerBackend:
    """The backend for a ledger file path or a ``postgresql://`` URL."""
    if is_postgres_url(location):
        from accountant.backends.postgres import PostgresBackend

        return PostgresBackend(
            str(location), create=create, read_only=read_only, timeout=timeout, filter_order=filter_order
        )
    return SqliteBackend(
        ledger_path(location), create=create, read_only=read_only, timeout=timeout, filter_order=filter_order
    )
