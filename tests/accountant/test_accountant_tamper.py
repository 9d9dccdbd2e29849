"""Fail closed: corrupt, truncated, foreign, wrong-schema, future-version and tampered ledgers refuse every use.

Each case damages a private copy of a real ledger; opening must raise LedgerUnavailable, leave the main file
byte-for-byte untouched, and never recreate or reset it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from accountant_testlib import raw

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


def _zero_running_vector(path: Path) -> None:
    conn = raw(path)
    (blob,) = conn.execute("SELECT rdp FROM spend WHERE scope = 'a'").fetchone()
    conn.execute("UPDATE spend SET rdp = zeroblob(?) WHERE scope = 'a'", (len(blob),))
    conn.close()


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
    "wrong-schema": (
        _sql(
            "DROP TRIGGER charges_append_only_update",
            "DROP TRIGGER charges_append_only_delete",
            "DROP TABLE charges",
            "CREATE TABLE charges (id INTEGER PRIMARY KEY, note TEXT)",
        ),
        "table 'charges' has columns",
    ),
    "running-vector-zeroed": (_zero_running_vector, "running RDP vector differs from the log"),
    "queries-count-edited": (
        _sql("UPDATE spend SET queries = 1 WHERE scope = 'a'"),
        "4 queries in the charge log but 1 recorded",
    ),
    "charge-row-deleted": (
        _sql(
            "DROP TRIGGER charges_append_only_delete",
            "DELETE FROM charges WHERE id = (SELECT max(id) FROM charges WHERE scope = 'b')",
        ),
        "scope 'b' is inconsistent .*2 queries in the charge log but 3 recorded",
    ),
    "sigma-raised": (
        _sql("DROP TRIGGER scopes_immutable", "UPDATE scopes SET sigma = 5.0 WHERE name = 'a'"),
        "event of another mechanism",
    ),
    "foreign-event-in-log": (
        _sql(
            "DROP TRIGGER charges_append_only_update",
            """UPDATE charges SET event = '{"module_name":"os","class_name":"system"}' WHERE id = 1""",
        ),
        "unreadable event in the charge log",
    ),
    "running-vector-not-a-blob": (
        _sql("UPDATE spend SET rdp = 'oops' WHERE scope = 'a'"),
        "unreadable scope row: running RDP vector is not a float64 blob",
    ),
    "running-vector-truncated": (
        _sql("UPDATE spend SET rdp = substr(rdp, 1, 13) WHERE scope = 'a'"),
        "unreadable scope row",
    ),
    "spend-row-missing": (_sql("DELETE FROM spend WHERE scope = 'b'"), "no spend row"),
    "orders-garbled": (
        _sql("DROP TRIGGER scopes_immutable", "UPDATE scopes SET orders = '[0.5]' WHERE name = 'a'"),
        "unreadable scope row",
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


def test_tamper_after_open_is_caught_by_the_next_charge(sample_ledger, ledger_copy):
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


def test_the_charge_log_is_append_only(ledger_copy):
    conn = raw(ledger_copy)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM charges")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE charges SET count = 0")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE scopes SET epsilon = 100")
    conn.close()
    with Ledger(ledger_copy, read_only=True) as book:
        assert book.verify().ok


def test_verify_report_of_an_intact_ledger(ledger_copy):
    with Ledger(ledger_copy, read_only=True) as book:
        report = book.verify()
    data = report.to_dict()
    assert data["ok"] and data["integrity"] == "ok" and data["schema_version"] == 2
    assert data["scopes"]["a"]["queries_logged"] == 4 and data["scopes"]["b"]["queries_logged"] == 3
    assert all(check["max_relative_difference"] == 0.0 for check in data["scopes"].values())
