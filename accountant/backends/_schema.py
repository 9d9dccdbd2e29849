"""The ledger schema both backends share: portable DDL templates, ordered migrations, the shape and id checks.

The statements are written once, with a few dialect tokens (``{real}``, ``{int}``, ``{blob}``, ``{autoid}``,
``{zero_rdp}``) and dialect hooks for what SQL does not standardise (triggers that refuse UPDATE/DELETE, the
mark of a dprdm database). :class:`Dialect` renders them for SQLite or PostgreSQL; each backend keeps only its
connection handling and how it records the schema version (SQLite ``PRAGMA user_version``, PostgreSQL a
``dprdm_migrations`` row), written in the same transaction as the migration itself.

Migration functions receive a connection whose ``execute(sql, params)`` takes ``?`` placeholders (the SQLite
connection itself, or the PostgreSQL wrapper that rewrites them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accountant.errors import AccountantError, LedgerUnavailable

SCHEMA_VERSION = 2

#: Every table of the ledger and its columns, in order (a ledger of another shape is refused).
COLUMNS = {
    "scopes": (
        "name",
        "epsilon",
        "delta",
        "k",
        "q",
        "sigma",
        "adjacency",
        "orders",
        "dp_accounting_version",
        "records",
        "created",
        "filter_order",
    ),
    "charges": ("id", "group_id", "time", "scope", "event", "count", "caller", "purpose"),
    "spend": ("scope", "queries", "rdp", "events", "carried", "extra"),
    "meta": ("key", "value"),
    "tombstones": ("id", "orders", "rdp", "updated"),
    "admissions": ("id", "time", "scope", "after_charge", "members", "rdp"),
}

#: (epsilon, delta, k, q, sigma, orders JSON) of a v1 scope -> its filter order alpha* (the ledger's maths).
FilterOrderFn = Callable[[float, float, int, float, float, str], float]

#: (trigger name, table, event, message): the triggers that keep the logs append-only and scopes immutable.
APPEND_ONLY = "the charge log is append-only"
ADMISSIONS_APPEND_ONLY = "the admission log is append-only"
SCOPE_IMMUTABLE = "a scope is immutable; create a new scope"
_V1_GUARDS = (
    ("charges_append_only_update", "charges", "UPDATE", APPEND_ONLY),
    ("charges_append_only_delete", "charges", "DELETE", APPEND_ONLY),
    ("scopes_immutable", "scopes", "UPDATE", SCOPE_IMMUTABLE),
)
_V2_GUARDS = (
    ("admissions_append_only_update", "admissions", "UPDATE", ADMISSIONS_APPEND_ONLY),
    ("admissions_append_only_delete", "admissions", "DELETE", ADMISSIONS_APPEND_ONLY),
)
#: Names of every guard trigger of a current ledger.
GUARD_TRIGGERS = tuple(name for name, *_ in _V1_GUARDS + _V2_GUARDS)


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines: column types and the guard-trigger DDL.

    Attributes:
        tokens: values of the DDL template tokens.
        guard: (name, table, event, message) -> statements creating a trigger that refuses ``event``.
        drop_guard: (name, table) -> the statement dropping that trigger.
        prelude: statements run first in the v1 migration (a trigger function, a database mark).
    """

    tokens: dict[str, str]
    guard: Callable[[str, str, str, str], Sequence[str]]
    drop_guard: Callable[[str, str], str]
    prelude: tuple[str, ...] = ()

    def render(self, template: str) -> str:
        return template.format(**self.tokens)


_V1_TABLES = (
    """CREATE TABLE scopes (
        name TEXT PRIMARY KEY NOT NULL,
        epsilon {real} NOT NULL, delta {real} NOT NULL,
        k {int} NOT NULL, q {real} NOT NULL, sigma {real} NOT NULL,
        adjacency TEXT NOT NULL, orders TEXT NOT NULL, dp_accounting_version TEXT NOT NULL,
        records {int}, created {real} NOT NULL)""",
    """CREATE TABLE charges (
        id {autoid},
        group_id TEXT NOT NULL, time {real} NOT NULL,
        scope TEXT NOT NULL REFERENCES scopes(name),
        event TEXT NOT NULL, count {int} NOT NULL CHECK (count >= 1),
        caller TEXT, purpose TEXT)""",
    "CREATE INDEX charges_scope ON charges(scope, event)",
    """CREATE TABLE spend (
        scope TEXT PRIMARY KEY NOT NULL REFERENCES scopes(name),
        queries {int} NOT NULL CHECK (queries >= 0),
        rdp {blob} NOT NULL)""",
)

_V2_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    "ALTER TABLE scopes ADD COLUMN filter_order {real}",
    "ALTER TABLE spend ADD COLUMN events {int} NOT NULL DEFAULT 0 CHECK (events >= 0)",
    "ALTER TABLE spend ADD COLUMN carried {blob}",
    "ALTER TABLE spend ADD COLUMN extra {blob}",
    "UPDATE spend SET carried = {zero_rdp}, extra = {zero_rdp}",
    """CREATE TABLE tombstones (
        id {int} PRIMARY KEY NOT NULL,
        orders TEXT NOT NULL, rdp {blob} NOT NULL, updated {real} NOT NULL)""",
    """CREATE TABLE admissions (
        id {autoid}, time {real} NOT NULL,
        scope TEXT NOT NULL REFERENCES scopes(name),
        after_charge {int} NOT NULL, members {int} NOT NULL CHECK (members >= 0), rdp {blob} NOT NULL)""",
)


def v1_statements(dialect: Dialect) -> list[str]:
    """The schema-v1 DDL in ``dialect`` (tables, index, guard triggers)."""
    statements = [*dialect.prelude, *(dialect.render(t) for t in _V1_TABLES)]
    for guard in _V1_GUARDS:
        statements.extend(dialect.guard(*guard))
    return statements


def _migrate_to_v1(conn: Any, dialect: Dialect, filter_order: FilterOrderFn) -> None:
    for statement in v1_statements(dialect):
        conn.execute(statement)


def _migrate_to_v2(conn: Any, dialect: Dialect, filter_order: FilterOrderFn) -> None:
    """v1 -> v2: ledger id, fixed filter order per scope, tombstones, admissions, carried/extra RDP vectors.

    Each v1 scope gets alpha* = the optimal order for the most queries its (mechanism, budget) admits, so it
    keeps exactly the number of admissible queries it had (see ``accountant.budget.filter_order``).
    """
    for template in _V2_TABLES:
        conn.execute(dialect.render(template))
    for guard in _V2_GUARDS:
        for statement in dialect.guard(*guard):
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('ledger_id', ?)", (uuid.uuid4().hex,))
    rows = conn.execute("SELECT name, epsilon, delta, k, q, sigma, orders FROM scopes").fetchall()
    conn.execute(dialect.drop_guard("scopes_immutable", "scopes"))
    for name, eps, delta, k, q, sigma, orders in rows:
        try:
            order = filter_order(eps, delta, k, q, sigma, orders)
        except (AccountantError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise LedgerUnavailable(
                f"cannot migrate scope '{name}' to schema v2 ({err}); the ledger is damaged; restore a backup"
            ) from err
        conn.execute("UPDATE scopes SET filter_order = ? WHERE name = ?", (order, name))
    for statement in dialect.guard(*_V1_GUARDS[2]):
        conn.execute(statement)


#: Ordered migrations: entry i brings schema version i to i + 1.
MIGRATIONS: tuple[Callable[[Any, Dialect, FilterOrderFn], None], ...] = (_migrate_to_v1, _migrate_to_v2)


def migrate(
    conn: Any,
    dialect: Dialect,
    version: int,
    filter_order: FilterOrderFn,
    record: Callable[[Any, int], None],
) -> None:
    """Run the migrations from ``version`` on inside the caller's transaction, each followed by ``record``."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[target - 1](conn, dialect, filter_order)
        record(conn, target)


def check_version(location: str, version: int) -> None:
    """Refuse a ledger newer than this code, or one left below the current version."""
    if version > SCHEMA_VERSION:
        raise LedgerUnavailable(
            f"ledger {location} has schema version {version}, newer than this dprdm supports "
            f"({SCHEMA_VERSION}); upgrade dprdm to use it"
        )
    if version < SCHEMA_VERSION:
        raise LedgerUnavailable(
            f"ledger {location} has schema version {version} < {SCHEMA_VERSION} and was not migrated; the "
            "ledger is damaged; restore it from a backup"
        )


def check_columns(location: str, columns_of: Callable[[str], tuple[str, ...]]) -> None:
    """Refuse a ledger whose tables do not have exactly the expected columns."""
    for table, columns in COLUMNS.items():
        found = columns_of(table)
        if found != columns:
            raise LedgerUnavailable(
                f"ledger {location} table '{table}' has columns {list(found)}, expected {list(columns)}; "
                "the ledger is damaged or tampered with; restore it from a backup"
            )


def read_ledger_id(location: str, rows: list[tuple]) -> str:
    """The ledger id from ``SELECT value FROM meta WHERE key = 'ledger_id'`` rows, or a refusal."""
    if len(rows) != 1 or not isinstance(rows[0][0], str) or len(rows[0][0]) != 32:
        raise LedgerUnavailable(
            f"ledger {location} has no valid ledger id; the ledger is damaged or tampered with; restore it "
            "from a backup"
        )
    return rows[0][0]


LEDGER_ID_SQL = "SELECT value FROM meta WHERE key = 'ledger_id'"


def holds_only(conn: Any, owned_scopes: frozenset[str]) -> bool:
    """Whether the ledger holds no charge and no scope but ``owned_scopes`` (so a failed creation may be undone)."""
    scopes = {row[0] for row in conn.execute("SELECT name FROM scopes")}
    charges = conn.execute("SELECT count(*) FROM charges").fetchone()[0]
    return charges == 0 and scopes <= owned_scopes
