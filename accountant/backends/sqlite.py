"""SQLite backend of the ledger: connections, pragmas, schema DDL, migrations and sqlite error translation.

This is the only module that knows it talks to SQLite (see :class:`accountant.backends.LedgerBackend` for the
seam; ``accountant.backends.postgres`` is the other implementation). The schema is the shared, dialect-rendered
DDL of ``accountant.backends._schema``; the ledger's own statements are portable SQL (``?`` placeholders).

Invariants:
- WAL journal, ``synchronous=FULL`` (a committed charge survives a power cut), ``isolation_level=None`` (we issue
  BEGIN IMMEDIATE / COMMIT ourselves), a finite busy timeout, no retry loops.
- One connection per thread, reopened after ``fork`` (pid check); an inherited connection is never used or
  closed in the child (closing it could disturb the parent's WAL state), it is parked for the process lifetime.
- Schema versioned with ``PRAGMA user_version`` and tagged with ``PRAGMA application_id``. Migrations are ordered
  functions, each run in the same transaction as its version bump. A file newer than the code, of another
  application, of the wrong shape, or damaged, is refused; a file is initialised only if this process created it
  (``O_CREAT | O_EXCL``), so a truncated ledger is never silently reset to zero.
- A file this store created is removed again when its creation fails midway (and by :meth:`SqliteBackend.discard`);
  a file that existed before is never removed.
- Every ``sqlite3.Error`` becomes :class:`LedgerUnavailable` in :meth:`SqliteBackend.guard` (exit 3: nothing charged).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from accountant.backends._connections import PerThread
from accountant.backends._schema import (
    LEDGER_ID_SQL,
    SCHEMA_VERSION,
    Dialect,
    FilterOrderFn,
    check_columns,
    check_version,
    holds_only,
    migrate,
    read_ledger_id,
    v1_statements,
)
from accountant.errors import AccountantError, AccountantInputError, LedgerUnavailable

APPLICATION_ID = 0x64707264  # "dprd"


def _guard(name: str, table: str, event: str, message: str) -> tuple[str]:
    return (
        f"CREATE TRIGGER {name} BEFORE {event} ON {table}\n        BEGIN SELECT RAISE(ABORT, '{message}'); END",
    )


DIALECT = Dialect(
    tokens={
        "real": "REAL",
        "int": "INTEGER",
        "blob": "BLOB",
        "autoid": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "zero_rdp": "zeroblob(length(rdp))",
    },
    guard=_guard,
    drop_guard=lambda name, table: f"DROP TRIGGER {name}",
    prelude=(f"PRAGMA application_id = {APPLICATION_ID}",),
)
#: The schema-v1 DDL as dprdm 0.1 wrote it (tests build v1 ledgers from it).
_V1 = tuple(v1_statements(DIALECT))[1:]


def _record_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {version}")


_SIDE_FILES = ("-wal", "-shm", "-journal")


def ledger_path(path: str | os.PathLike[str]) -> Path:
    """Absolute ledger path with ``~`` expanded; an unknown ``~user`` is an input error, not a crash."""
    try:
        return Path(path).expanduser().absolute()
    except RuntimeError as err:  # Path.expanduser: "Could not determine home directory."
        raise AccountantInputError(
            f"ledger path {os.fspath(path)!r:.80} starts with '~' but the home directory cannot be determined "
            f"({err}); pass an absolute path"
        ) from None


def _remove_files(path: Path) -> None:
    """Remove a ledger file and its SQLite side files (missing ones are fine)."""
    for name in ("", *_SIDE_FILES):
        with suppress(OSError):
            Path(f"{path}{name}").unlink(missing_ok=True)


class SqliteBackend:
    """Per-thread SQLite connections to one ledger file, with error translation, transactions and migrations.

    Implements :class:`accountant.backends.LedgerBackend`.
    """

    def __init__(
        self, path: Path, *, create: bool, read_only: bool, timeout: float, filter_order: FilterOrderFn
    ) -> None:
        self.path = path
        self.location = str(path)
        self._filter_order = filter_order
        self.read_only = read_only
        self.timeout = float(timeout)
        self._conns: PerThread[sqlite3.Connection] = PerThread(self.location)
        self.created = False  # True once this store created the file (it is then removed if creation fails)
        try:
            self._open(create=create and not read_only)
        except BaseException:
            self.close()
            if self.created:
                _remove_files(self.path)
            raise

    # -- errors ---------------------------------------------------------------------------------------------
    @contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Translate any ``sqlite3.Error`` raised while doing ``action`` into :class:`LedgerUnavailable`."""
        try:
            yield
        except sqlite3.Error as err:
            text = " ".join(str(err).split())
            if "locked" in text or "busy" in text:
                fix = f"another process held the ledger lock for more than {self.timeout:g}s; retry later"
            else:
                fix = "the ledger is missing, damaged or not a dprdm ledger; restore it from a backup"
            raise LedgerUnavailable(
                f"ledger {self.path} unavailable while {action} ({text}); nothing was charged; {fix}"
            ) from err

    # -- connections ----------------------------------------------------------------------------------------
    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(os.fsencode(self.path))}?mode={mode}"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=self.timeout, check_same_thread=False
        )
        try:
            if mode != "ro":
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and reopened in a forked child."""
        return self._conns.get(self._open_connection)

    def _open_connection(self) -> sqlite3.Connection:
        with self.guard("opening"):
            return self._connect("ro" if self.read_only else "rw")

    def _open(self, *, create: bool) -> None:
        existed = self.path.exists()
        if not existed and not create:
            raise LedgerUnavailable(
                f"no ledger at {self.path}; every charge is refused (fail closed); create it with "
                "'dprdm budget init' (or Ledger(path, create=True))"
            )
        if not existed and not self.path.parent.is_dir():
            raise AccountantInputError(
                f"ledger directory {self.path.parent} does not exist; create it or pass another --ledger path"
            )
        if not existed:
            self._create_file()
        with self.guard("opening"):
            conn = self.conn()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and not existed:  # created by us, or by a racing process that is initialising it
                self._initialise(conn)
            else:
                if (
                    0 < version < SCHEMA_VERSION
                    and conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                ):
                    self._upgrade(conn)
                self._check_schema(conn)

    def _create_file(self) -> None:
        """Create the empty ledger file exclusively (0600); losing the race to another process is fine."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # a racing process created it first; _initialise is idempotent under the write lock
        except OSError as err:
            raise AccountantInputError(
                f"cannot create ledger {self.path} ({err.strerror or err}); pass a --ledger path in a writable "
                "directory"
            ) from None
        self.created = True
        os.close(fd)
        with suppress(OSError):
            os.chmod(self.path, 0o600)  # a restrictive umask must not leave it unwritable

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a file this process just created (another process may have won the race)."""
        conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file; must run outside a transaction
        with self.transaction("creating the ledger"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and objects == 0:
                self._migrate(conn, 0)
        self._check_schema(conn)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Run the migrations from ``version`` on, each with its version bump, inside the caller's transaction."""
        migrate(conn, DIALECT, version, self._filter_order, _record_version)

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Migrate an older ledger in one write transaction (re-checked under the lock; racing openers wait)."""
        if self.read_only:
            raise LedgerUnavailable(
                f"ledger {self.path} has schema version {conn.execute('PRAGMA user_version').fetchone()[0]} "
                f"and needs a migration to v{SCHEMA_VERSION}, which a read-only open cannot do; open it once "
                "writable (e.g. Ledger(path)) to migrate it"
            )
        with self.transaction("migrating the ledger"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < version < SCHEMA_VERSION:
                self._migrate(conn, version)

    def ledger_id(self) -> str:
        """The ledger's uuid4 hex identity (``meta`` table)."""
        return read_ledger_id(self.location, self.read("reading the ledger id", LEDGER_ID_SQL))

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app != APPLICATION_ID:
            raise LedgerUnavailable(
                f"{self.path} is not a dprdm ledger (application_id {app}, user_version {version}); every charge "
                "is refused (fail closed); restore the ledger from a backup or pass the right --ledger path"
            )
        check_version(self.location, version)
        check_columns(
            self.location, lambda table: tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        )

    # -- statements -----------------------------------------------------------------------------------------
    @contextmanager
    def transaction(
        self, action: str, *, scopes: Sequence[str] = (), exclusive: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls back. Side effects belong after the block.

        ``BEGIN IMMEDIATE`` takes the database's one write lock, so ``scopes`` and ``exclusive`` (what a
        PostgreSQL backend locks) need nothing more here.
        """
        conn = self.conn()
        with self.guard(action):
            conn.execute("BEGIN IMMEDIATE")
        try:
            with self.guard(action):
                yield conn
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @staticmethod
    def integrity(conn: sqlite3.Connection) -> str:
        """``PRAGMA quick_check``: 'ok' or the damage found (inside the caller's read transaction)."""
        return conn.execute("PRAGMA quick_check").fetchone()[0]

    def read(self, action: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one read statement (in its own implicit transaction) and return all rows."""
        conn = self.conn()
        with self.guard(action):
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def snapshot(self, action: str) -> Iterator[sqlite3.Connection]:
        """A consistent read transaction (``BEGIN`` ... ``COMMIT``) for multi-statement reads."""
        conn = self.conn()
        with self.guard(action):
            conn.execute("BEGIN")
        try:
            with self.guard(action):
                yield conn
        finally:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    def discard(self, owned_scopes: frozenset[str]) -> bool:
        """Close, and remove the file if this store created it and it holds only ``owned_scopes`` and no charge.

        Undoes a creation that failed midway. Never raises; whenever that cannot be confirmed, the file stays.
        """
        removed = False
        if self.created and not self._conns.closed:
            try:
                conn = self.conn()
                conn.execute("BEGIN IMMEDIATE")  # hold the write lock while checking and removing
                try:
                    if holds_only(conn, owned_scopes):
                        self.path.unlink()
                        removed = True
                finally:
                    conn.execute("ROLLBACK")
            except (AccountantError, OSError, sqlite3.Error):
                pass
        self.close()
        if removed:
            _remove_files(self.path)
        return removed

    def close(self) -> None:
        """Close this process's connections (inherited ones stay parked)."""
        self._conns.close()
