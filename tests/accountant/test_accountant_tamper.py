"""Fail closed: corrupt, truncated, foreign, wrong-schema, future-version and tampered ledgers refuse every use.

Each case damages a private copy of a real ledger (a file copy; a fresh PostgreSQL schema); opening must raise
LedgerUnavailable, leave the stored ledger untouched (file bytes; every row), and never recreate or reset it.
The logical tampering cases run on every backend; byte-level damage is SQLite's, schema damage PostgreSQL's.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from accountant_testlib import Backend, build_sample, pg_server_or_skip, raw

from accountant import Ledger, LedgerUnavailable


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overwrite_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not sqlite at all")


def _overwrite_page_bytes(path: Path) -> None:
    with open(path, "r+b") as f:  # garbage over b-tree pages 2-4 (scopes table, its index, charges)
        f.seek(4096)
        f.write(bytes(range(256)) * 48)


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _truncate_zero(path: Path) -> None:
    os.truncate(path, 0)


def _foreign_database(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()


def _sql(*statements: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        conn = raw(path)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return apply


def _zero_running_vector(location: Path | str) -> None:
    conn = raw(location)
    (blob,) = conn.execute("SELECT rdp FROM spend WHERE scope = 'a'").fetchone()
    conn.execute("UPDATE spend SET rdp = ? WHERE scope = 'a'", (bytes(len(blob)),))
    conn.close()


#: Damage only a SQLite file can suffer (bytes, header, truncation, PRAGMAs).
CASES = {
    "header-overwritten": (_overwrite_header, "not a database"),
    "pages-overwritten": (_overwrite_page_bytes, "unavailable|integrity|malformed|inconsistent|not a dprdm"),
    "truncated-half": (_truncate_half, "unavailable|integrity|malformed|inconsistent"),
    "truncated-to-zero": (_truncate_zero, "is not a dprdm ledger"),
    "foreign-sqlite": (_foreign_database, "is not a dprdm ledger"),
    "future-user-version": (
        _sql("PRAGMA user_version = 3"),
        "schema version 3, newer than this dprdm supports",
    ),
    "running-vector-not-a-blob": (
        _sql("UPDATE spend SET rdp = 'oops' WHERE scope = 'a'"),
        "unreadable scope row: running RDP vector is not a float64 blob",
    ),
}


def _bypass(backend: str, *triggers: tuple[str, str]) -> list[str]:
    """Statements that let the next ones pass the guard triggers (SQLite: drop them; PostgreSQL: replica role)."""
    if backend == "sqlite":
        return [f"DROP TRIGGER {name}" for name, _ in triggers]
    return ["SET session_replication_role = replica"]  # superuser only; triggers stay in place


def _tamper(*statements: str, triggers: tuple[tuple[str, str], ...] = ()) -> Callable[[str, Path | str], None]:
    def apply(backend: str, location: Path | str) -> None:
        conn = raw(location)
        for statement in (*_bypass(backend, *triggers), *statements):
            conn.execute(statement)
        conn.close()

    return apply


def _wrong_schema(backend: str, location: Path | str) -> None:
    drop = ["DROP TRIGGER charges_append_only_update", "DROP TRIGGER charges_append_only_delete"]
    statements = drop if backend == "sqlite" else []
    _tamper(*statements, "DROP TABLE charges", "CREATE TABLE charges (id INTEGER PRIMARY KEY, note TEXT)")(
        backend, location
    )


CHARGES_DELETE = (("charges_append_only_delete", "charges"),)
CHARGES_UPDATE = (("charges_append_only_update", "charges"),)
SCOPES_UPDATE = (("scopes_immutable", "scopes"),)

#: Logical tampering, the same on every backend (each statement list is portable SQL).
CONTRACT_CASES = {
    "wrong-schema": (_wrong_schema, "table 'charges' has columns"),
    "running-vector-zeroed": (lambda b, loc: _zero_running_vector(loc), "running RDP vector differs from the log"),
    "queries-count-edited": (
        _tamper("UPDATE spend SET queries = 1 WHERE scope = 'a'"),
        "4 queries in the charge log but 1 recorded",
    ),
    "charge-row-deleted": (
        _tamper(
            "DELETE FROM charges WHERE id = (SELECT max(id) FROM charges WHERE scope = 'b')", triggers=CHARGES_DELETE
        ),
        "scope 'b' is inconsistent .*2 queries in the charge log but 3 recorded",
    ),
    "sigma-raised": (
        _tamper("UPDATE scopes SET sigma = 5.0 WHERE name = 'a'", triggers=SCOPES_UPDATE),
        "event of another mechanism",
    ),
    "foreign-event-in-log": (
        _tamper(
            """UPDATE charges SET event = '{"module_name":"os","class_name":"system"}' WHERE id = 1""",
            triggers=CHARGES_UPDATE,
        ),
        "unreadable event in the charge log",
    ),
    "running-vector-truncated": (
        _tamper("UPDATE spend SET rdp = substr(rdp, 1, 13) WHERE scope = 'a'"),
        "unreadable scope row",
    ),
    "spend-row-missing": (_tamper("DELETE FROM spend WHERE scope = 'b'"), "no spend row"),
    "orders-garbled": (
        _tamper("UPDATE scopes SET orders = '[0.5]' WHERE name = 'a'", triggers=SCOPES_UPDATE),
        "unreadable scope row",
    ),
}

#: Damage only a PostgreSQL schema can suffer.
POSTGRES_CASES = {
    "future-migration": (_sql("INSERT INTO dprdm_migrations VALUES (3, 0)"), "schema version 3, newer than"),
    "migrations-table-dropped": (_sql("DROP TABLE dprdm_migrations"), "is not a dprdm ledger"),
    "trigger-dropped": (
        _sql("DROP TRIGGER charges_append_only_delete ON charges"),
        "integrity check \\(append-only triggers missing or disabled: charges_append_only_delete\\)",
    ),
    "trigger-disabled": (
        _sql("ALTER TABLE charges DISABLE TRIGGER charges_append_only_truncate"),
        "append-only triggers missing or disabled: charges_append_only_truncate",
    ),
}


@pytest.mark.parametrize("damage,message", CASES.values(), ids=list(CASES))
@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
def test_damaged_ledger_refuses_and_is_left_untouched(ledger_copy, damage, message, read_only):
    damage(ledger_copy)
    before = _sha(ledger_copy)
    with pytest.raises(LedgerUnavailable, match=message) as info:
        Ledger(ledger_copy, create=True, read_only=read_only)
    assert "\n" not in str(info.value)
    assert ledger_copy.exists() and _sha(ledger_copy) == before  # never recreated, never reset


@pytest.mark.parametrize("damage,message", CONTRACT_CASES.values(), ids=list(CONTRACT_CASES))
@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
def test_tampered_ledger_refuses_and_is_left_untouched(backend, sample_copy, damage, message, read_only):
    damage(backend.name, sample_copy)
    before = backend.fingerprint(sample_copy)
    with pytest.raises(LedgerUnavailable, match=message) as info:
        Ledger(sample_copy, create=True, read_only=read_only)
    assert "\n" not in str(info.value)
    assert backend.fingerprint(sample_copy) == before  # never recreated, never reset


@pytest.mark.parametrize("damage,message", POSTGRES_CASES.values(), ids=list(POSTGRES_CASES))
def test_damaged_postgres_ledger_refuses_and_is_left_untouched(tmp_path, damage, message):
    backend = Backend(name="postgres", tmp=tmp_path, server=pg_server_or_skip())
    sample_copy = build_sample(backend.new("sample"))
    damage(sample_copy)
    before = backend.fingerprint(sample_copy)
    for read_only in (False, True):
        with pytest.raises(LedgerUnavailable, match=message) as info:
            Ledger(sample_copy, create=True, read_only=read_only)
        assert "\n" not in str(info.value)
    assert backend.fingerprint(sample_copy) == before


def test_tamper_after_open_is_caught_by_the_next_charge(sample_copy):
    ledger_copy = sample_copy
    book = Ledger(ledger_copy)
    try:
        _zero_running_vector(ledger_copy)
        for _ in range(2):  # every charge refuses, not just the first
            with pytest.raises(
                LedgerUnavailable, match="running RDP vector does not match 4 charged queries"
            ):
                book.charge("a")
        with pytest.raises(LedgerUnavailable, match="scope 'a' is inconsistent"):
            book.verify()
        with pytest.raises(LedgerUnavailable, match="scope 'a' is inconsistent"):
            book.status("a")
        assert book.charge("b").lines[0].queries_charged == 4  # an intact scope still works
    finally:
        book.close()


def test_the_logs_are_append_only(backend, sample_copy):
    if backend.name == "sqlite":
        refused: Any = sqlite3.IntegrityError
        statements = ["DELETE FROM charges", "UPDATE charges SET count = 0", "DELETE FROM admissions"]
    else:
        import psycopg

        refused = psycopg.IntegrityError
        statements = ["DELETE FROM charges", "UPDATE charges SET count = 0", "TRUNCATE charges", "TRUNCATE admissions"]
    conn = raw(sample_copy)
    with Ledger(sample_copy) as book:  # an admission row, so its guard fires too
        book.admit("a", [5])
    for statement in statements:
        with pytest.raises(refused, match="append-only"):
            conn.execute(statement)
    with pytest.raises(refused, match="immutable"):
        conn.execute("UPDATE scopes SET epsilon = 100")
    conn.close()
    with Ledger(sample_copy, read_only=True) as book:
        assert book.verify().ok and len(book.history()) == 7


def test_verify_report_of_an_intact_ledger(sample_copy):
    with Ledger(sample_copy, read_only=True) as book:
        report = book.verify()
    data = report.to_dict()
    assert data["ok"] and data["integrity"] == "ok" and data["schema_version"] == 2
    assert data["scopes"]["a"]["queries_logged"] == 4 and data["scopes"]["b"]["queries_logged"] == 3
    assert all(check["max_relative_difference"] == 0.0 for check in data["scopes"].values())
