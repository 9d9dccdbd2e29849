"""PostgreSQL backend of the ledger (issue 14): one budget shared by many processes on many hosts, via psycopg 3.

A ledger is one PostgreSQL schema (default ``dprdm``; choose another with ``?schema=NAME`` in the URL, which
dprdm removes before connecting): ``postgresql://user@host:5432/db?schema=shard_ledgers``. The tables, columns
and migrations are those of the SQLite ledger (``accountant.backends._schema``, rendered with ``DOUBLE
PRECISION``/``BIGINT``/``BYTEA``); the schema version is the highest row of ``dprdm_migrations``, each written in
the transaction of its migration.

Invariants (the same contract as the SQLite backend):
- Concurrency by the database. A charge runs in one READ COMMITTED transaction that first locks the ``spend``
  rows of its scopes with ``SELECT ... ORDER BY scope FOR UPDATE`` (one fixed order, so two multi-scope charges
  cannot deadlock), then reads, checks the filter and writes. Writers of one scope are serialised by that row
  lock; charges of other scopes run in parallel. Creating scopes and moving records (admit/retire, which touch
  the shared tombstones) also take a transaction-scoped advisory lock of the ledger, before any row lock.
- Durable: every session sets ``synchronous_commit = on`` (COMMIT returns after the WAL flush; the server must
  run with ``fsync = on``, its default). ``lock_timeout`` = the ledger's timeout.
- Append-only logs: BEFORE UPDATE/DELETE/TRUNCATE triggers on ``charges`` and ``admissions`` and BEFORE UPDATE on
  ``scopes`` refuse, and an open checks the triggers are present and enabled (a ledger without them is refused).
  A table owner can still drop them; deploy with an owner role for migrations and an application role granted
  only SELECT/INSERT (and UPDATE on ``spend``, ``tombstones``), as PostgreSQL allows.
- Fail closed: any ``psycopg.Error`` becomes :class:`LedgerUnavailable` (exit 3). A connection lost before
  COMMIT rolls the transaction back on the server, so nothing was charged; a connection lost *during* COMMIT is
  reported as such (the charge may have been recorded, so the budget may be spent, never under-counted; nothing
  may be released). A broken connection is replaced by a new one on the next call; nothing is retried.
- One connection per thread, replaced after ``fork``; in the child the inherited sockets are pointed at
  ``/dev/null`` at once (``os.register_at_fork``) so that closing or collecting them can never end the
  parent's sessions.
"""

from __future__ import annotations

import logging
import os
import weakref
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from accountant.backends import _schema
from accountant.backends._connections import PerThread
from accountant.errors import AccountantError, AccountantInputError, LedgerUnavailable

try:  # an optional dependency: dprdm[scale]
    import psycopg
    from psycopg import sql as pgsql
except ImportError:  # pragma: no cover - exercised where psycopg is absent
    psycopg = None

__all__ = ["DEFAULT_SCHEMA", "PostgresBackend", "public_url"]

DEFAULT_SCHEMA = "dprdm"
logger = logging.getLogger(__name__)
_TRUNCATE_GUARDED = {
    "charges_append_only_delete": _schema.APPEND_ONLY,
    "admissions_append_only_delete": _schema.ADMISSIONS_APPEND_ONLY,
}


def _split_url(url: str) -> tuple[str, str, str]:
    """(libpq URL without dprdm's ``schema`` parameter, schema name, the URL shown to users: no password)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not schema or len(schema) > 63 or "\x00" in schema:
        raise AccountantInputError(
            f"ledger URL schema {schema!r:.80} must be a PostgreSQL identifier of 1-63 characters; "
            "pass ?schema=NAME"
        )
    libpq = [(key, value) for key, value in query if key != "schema"]
    connect = urlunsplit(parts._replace(query=urlencode(libpq)))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    shown = [(key, value) for key, value in query if key != "password"]
    return connect, schema, urlunsplit(parts._replace(netloc=netloc, query=urlencode(shown)))


def public_url(url: str) -> str:
    """The ledger URL without its password (what ``Ledger.location`` reports and messages show)."""
    return _split_url(url)[2]


def _guard(name: str, table: str, event: str, message: str) -> tuple[str, ...]:
    statements = [
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION dprdm_refuse('{message}')"
    ]
    if name in _TRUNCATE_GUARDED:
        statements.append(
            f"CREATE TRIGGER {table}_append_only_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION dprdm_refuse('{message}')"
        )
    return tuple(statements)


DIALECT = _schema.Dialect(
    tokens={
        "real": "DOUBLE PRECISION",
        "int": "BIGINT",
        "blob": "BYTEA",
        "autoid": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "zero_rdp": "decode(repeat('00', length(rdp)), 'hex')",
    },
    guard=_guard,
    drop_guard=lambda name, table: f"DROP TRIGGER {name} ON {table}",
    prelude=(
        """CREATE FUNCTION dprdm_refuse() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = 'integrity_constraint_violation'; END $fn$""",
    ),
)
#: Every trigger a current ledger must have, enabled (the truncate guards included).
_TRIGGERS = frozenset(_schema.GUARD_TRIGGERS) | {
    "charges_append_only_truncate",
    "admissions_append_only_truncate",
}


@lru_cache(maxsize=512)
def _placeholders(statement: str) -> str:
    """The ledger's portable ``?`` placeholders as psycopg's ``%s`` (its statements hold no literal ``?``/``%``)."""
    return statement.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection that speaks the ledger's portable SQL (``?`` placeholders) like ``sqlite3``."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> Any:
        if params is None:
            return self.raw.execute(statement)
        return self.raw.execute(_placeholders(statement), tuple(params))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_placeholders(statement), rows)

    def usable(self) -> bool:
        """False once the connection is closed or broken (it is then replaced, never reused)."""
        return not (self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


_BACKENDS: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()


def _neuter_inherited() -> None:
    """In a forked child: point every inherited libpq socket at /dev/null (the parent's sessions stay intact)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for backend in list(_BACKENDS):
            for conn in backend._conns.take_inherited():
                with suppress(Exception):
                    os.dup2(devnull, conn.raw.pgconn.socket)
    finally:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_neuter_inherited)


def _missing_driver() -> AccountantInputError:
    return AccountantInputError(
        "a postgresql:// ledger needs psycopg, which is not installed; install it with pip install 'dprdm[scale]'"
    )


class PostgresBackend:
    """Per-thread psycopg connections to one ledger schema, with error translation, row locks and migrations.

    Implements :class:`accountant.backends.LedgerBackend`.
    """

    def __init__(
        self, url: str, *, create: bool, read_only: bool, timeout: float, filter_order: _schema.FilterOrderFn
    ) -> None:
        if psycopg is None:
            raise _missing_driver()
        self._conninfo, self.schema, self.location = _split_url(url)
        self.path = None
        self.read_only = read_only
        self.timeout = float(timeout)
        self._filter_order = filter_order
        self._lock_key = zlib.crc32(f"dprdm ledger {self.schema}".encode()) - 2**31
        self._conns: PerThread[_Connection] = PerThread(self.location, usable=_Connection.usable)
        self.created = False
        self._created_schema = False
        _BACKENDS.add(self)
        try:
            self._open(create=create and not read_only)
        except BaseException:
            self.close()
            raise

    # -- errors ---------------------------------------------------------------------------------------------
    @contextmanager
    def guard(self, action: str, *, committing: bool = False) -> Iterator[None]:
        """Translate any ``psycopg.Error`` raised while doing ``action`` into :class:`LedgerUnavailable`."""
        try:
            yield
        except psycopg.Error as err:
            text = " ".join(str(err).split()) or type(err).__name__
            lost = isinstance(err, psycopg.OperationalError) and self._lost()
            if committing and lost:
                raise LedgerUnavailable(
                    f"ledger {self.location} connection was lost during COMMIT while {action} ({text}); the "
                    "server may have recorded it (the budget may be spent, never under-counted); nothing may be "
                    "released; check the ledger with 'dprdm budget show' and retry"
                ) from err
            if isinstance(err, psycopg.errors.LockNotAvailable):
                fix = f"another process held the ledger lock for more than {self.timeout:g}s; retry later"
            elif isinstance(err, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)):
                fix = "a concurrent transaction conflicted with this one; retry"
            elif lost or isinstance(err, psycopg.OperationalError):
                fix = "the connection to the ledger server was lost or refused; retry when the server is back"
            else:
                fix = "the ledger is damaged or not a dprdm ledger; restore it from a backup"
            raise LedgerUnavailable(
                f"ledger {self.location} unavailable while {action} ({text}); nothing was charged; {fix}"
            ) from err

    def _lost(self) -> bool:
        conn = self._conns.current()
        return conn is None or not conn.usable()

    # -- connections ----------------------------------------------------------------------------------------
    def _connect(self) -> _Connection:
        raw = psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self.timeout)),
            application_name="dprdm-ledger",
        )
        try:
            raw.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
            raw.execute("SET synchronous_commit TO on")
            raw.execute(
                pgsql.SQL("SET lock_timeout TO {}").format(pgsql.Literal(f"{int(self.timeout * 1000)}ms"))
            )
            if self.read_only:
                raw.execute("SET default_transaction_read_only TO on")
        except BaseException:
            raw.close()
            raise
        return _Connection(raw)

    def conn(self) -> _Connection:
        """This thread's connection: opened on first use, after a fork, and after the old one broke."""
        return self._conns.get(self._open_connection)

    def _open_connection(self) -> _Connection:
        with self.guard("connecting"):
            return self._connect()

    def _state(self, conn: _Connection) -> int | None:
        """Schema version; None if the schema holds no table; -1 if it holds tables but is not a dprdm ledger."""
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (self.schema,)
            )
        }
        if not tables:
            return None
        if "dprdm_migrations" not in tables:
            return -1
        return conn.execute("SELECT COALESCE(MAX(version), 0) FROM dprdm_migrations").fetchone()[0]

    def _open(self, *, create: bool) -> None:
        conn = self.conn()
        with self.guard("opening"):
            version = self._state(conn)
        if version is None and not create:
            raise LedgerUnavailable(
                f"no ledger at {self.location}; every charge is refused (fail closed); create it with "
                "'dprdm budget init' (or Ledger(url, create=True))"
            )
        if version is None or 0 <= version < _schema.SCHEMA_VERSION:
            self._initialise_or_upgrade(conn)
        with self.guard("opening"):
            self._check_schema(conn)
            if conn.execute("SHOW fsync").fetchone()[0] != "on":
                logger.warning(
                    "ledger %s: the server runs with fsync=off, so a committed charge can be lost in a crash; "
                    "run the ledger's server with fsync=on",
                    self.location,
                )

    def _record_version(self, conn: _Connection, version: int) -> None:
        conn.execute(
            "INSERT INTO dprdm_migrations (version, applied) VALUES (?, extract(epoch FROM now()))",
            (version,),
        )

    def _initialise_or_upgrade(self, conn: _Connection) -> None:
        """Create the schema (or migrate it) under the ledger's advisory lock; racing openers wait and re-check."""
        if self.read_only:
            raise LedgerUnavailable(
                f"ledger {self.location} needs a migration to v{_schema.SCHEMA_VERSION}, which a read-only open cannot do; "
                "open it once writable (e.g. Ledger(url)) to migrate it"
            )
        with self.transaction("creating the ledger", exclusive=True):
            version = self._state(conn)
            if version is None:
                existed = conn.execute(
                    "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", (self.schema,)
                ).fetchone()[0]
                conn.execute(
                    pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema))
                )
                conn.execute(
                    "CREATE TABLE dprdm_migrations (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
                )
                version = 0
                self.created, self._created_schema = True, not existed
            if 0 <= version < _schema.SCHEMA_VERSION:
                _schema.migrate(conn, DIALECT, version, self._filter_order, self._record_version)

    def _check_schema(self, conn: _Connection) -> None:
        version = self._state(conn)
        if version is None or version < 0:
            raise LedgerUnavailable(
                f"{self.location} is not a dprdm ledger (schema '{self.schema}' has no dprdm_migrations table); "
                "every charge is refused (fail closed); restore the ledger from a backup or pass the right --ledger"
            )
        _schema.check_version(self.location, version)
        found: dict[str, list[str]] = {table: [] for table in _schema.COLUMNS}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ? "
            "ORDER BY table_name, ordinal_position",
            (self.schema,),
        ):
            found.setdefault(table, []).append(column)
        _schema.check_columns(self.location, lambda table: tuple(found[table]))

    def integrity(self, conn: _Connection) -> str:
        """'ok', or the guard triggers that are missing or disabled (the log would not be append-only)."""
        enabled = {
            row[0]
            for row in conn.execute(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ? AND NOT t.tgisinternal AND t.tgenabled <> 'D'",
                (self.schema,),
            )
        }
        missing = sorted(_TRIGGERS - enabled)
        return "ok" if not missing else f"append-only triggers missing or disabled: {', '.join(missing)}"

    def ledger_id(self) -> str:
        """The ledger's uuid4 hex identity (``meta`` table)."""
        return _schema.read_ledger_id(
            self.location, self.read("reading the ledger id", _schema.LEDGER_ID_SQL)
        )

    # -- statements -----------------------------------------------------------------------------------------
    @contextmanager
    def transaction(
        self, action: str, *, scopes: Sequence[str] = (), exclusive: bool = False
    ) -> Iterator[_Connection]:
        """``BEGIN`` (READ COMMITTED), locks, ... ``COMMIT``; any exception rolls back.

        ``exclusive`` takes the ledger's advisory lock first; then the ``spend`` rows of ``scopes`` are locked in
        name order (``FOR UPDATE``), so every later read in the block sees their latest committed state and no
        other writer of those scopes can interleave. Side effects belong after the block.
        """
        conn = self.conn()
        with self.guard(action):
            conn.execute("BEGIN")
        try:
            with self.guard(action):
                if exclusive:
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (self._lock_key,))
                if scopes:
                    conn.execute(
                        "SELECT scope FROM spend WHERE scope = ANY(?) ORDER BY scope FOR UPDATE",
                        (sorted(scopes),),
                    )
                yield conn
            with self.guard(action, committing=True):
                conn.execute("COMMIT")
        except BaseException:
            with suppress(Exception):
                if not conn.raw.closed and conn.in_transaction:
                    conn.raw.execute("ROLLBACK")
            raise

    def read(self, action: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one read statement (its own implicit transaction) and return all rows."""
        conn = self.conn()
        with self.guard(action):
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def snapshot(self, action: str) -> Iterator[_Connection]:
        """A consistent read transaction (REPEATABLE READ, READ ONLY) for multi-statement reads."""
        conn = self.conn()
        with self.guard(action):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            with self.guard(action):
                yield conn
        finally:
            with suppress(Exception):
                if not conn.raw.closed and conn.in_transaction:
                    conn.raw.execute("COMMIT")

    def discard(self, owned_scopes: frozenset[str]) -> bool:
        """Close, and drop what this backend created if it holds only ``owned_scopes`` and no charge. Never raises."""
        removed = False
        if self.created and not self._conns.closed:
            try:
                with self.transaction("discarding a new ledger", exclusive=True) as conn:
                    if _schema.holds_only(conn, owned_scopes):
                        if self._created_schema:
                            conn.execute(
                                pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(self.schema))
                            )
                        else:
                            conn.execute(
                                "DROP TABLE admissions, tombstones, meta, spend, charges, scopes, dprdm_migrations"
                            )
                            conn.execute("DROP FUNCTION dprdm_refuse()")
                        removed = True
            except (AccountantError, psycopg.Error):
                removed = False
        self.close()
        return removed

    def close(self) -> None:
        """Close this process's connections (inherited ones stay parked)."""
        self._conns.close()
