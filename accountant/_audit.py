"""Recompute every scope of a ledger from its append-only charge log (on open and in ``Ledger.verify``).

Checks: SQLite ``quick_check``; each scope row parses; the logged events are the scope's mechanism; the logged
query count equals the recorded one; the stored running RDP vector equals the sum of count * per-event RDP
(relative tolerance 1e-9); no rows refer to unknown scopes. Cost: one GROUP BY over the log plus one cached
per-event RDP vector per distinct event.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np

from accountant._rows import RTOL, SCOPE_SQL, parse_row, tampered
from accountant._store import SCHEMA_VERSION
from accountant.errors import LedgerUnavailable
from accountant.events import DP_ACCOUNTING_VERSION, event_from_json, event_rdp
from accountant.records import ScopeCheck, VerifyReport


def _failed(name: str, recorded: int, detail: str) -> ScopeCheck:
    return ScopeCheck(
        scope=name,
        ok=False,
        queries_logged=0,
        queries_recorded=recorded,
        max_relative_difference=math.inf,
        detail=detail,
    )


def _check_scope(row: tuple, logged: list[tuple[str, int]]) -> ScopeCheck:
    try:
        s = parse_row(row)
    except ValueError as err:
        return _failed(row[0], int(row[11] or 0), f"unreadable scope row: {err}")
    recomputed = np.zeros_like(s.per_query)
    total = 0
    details = []
    expected_event = s.mechanism.dp_event()
    for event_text, count in logged:
        try:
            event = event_from_json(event_text)
        except LedgerUnavailable:
            details.append("unreadable event in the charge log")
            continue
        if event != expected_event:
            details.append("charge log holds an event of another mechanism")
        recomputed = recomputed + count * event_rdp(event, s.orders)
        total += count
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(s.rdp - recomputed) / np.maximum(np.abs(recomputed), np.finfo(float).tiny)
    diff = np.where(s.rdp == recomputed, 0.0, diff)
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if total != s.queries:
        details.append(f"{total} queries in the charge log but {s.queries} recorded")
    if not worst <= RTOL:
        details.append(f"running RDP vector differs from the log by {worst:.3g} (relative)")
    if s.version != DP_ACCOUNTING_VERSION and details:
        details.append(f"recorded with dp-accounting {s.version}, running {DP_ACCOUNTING_VERSION}")
    return ScopeCheck(
        scope=s.name,
        ok=not details,
        queries_logged=total,
        queries_recorded=s.queries,
        max_relative_difference=worst,
        detail="; ".join(details) or "ok",
    )


def audit(conn: sqlite3.Connection, path: Path) -> VerifyReport:
    """Build the verification report inside the caller's read transaction (never raises on mismatch)."""
    integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    rows = conn.execute(SCOPE_SQL + " ORDER BY s.name").fetchall()
    logged = conn.execute("SELECT scope, event, SUM(count) FROM charges GROUP BY scope, event").fetchall()
    orphans = conn.execute(
        "SELECT scope FROM spend WHERE scope NOT IN (SELECT name FROM scopes) "
        "UNION SELECT scope FROM charges WHERE scope NOT IN (SELECT name FROM scopes)"
    ).fetchall()
    by_scope: dict[str, list[tuple[str, int]]] = {}
    for name, event_text, total in logged:
        by_scope.setdefault(name, []).append((event_text, int(total)))
    checks = [_check_scope(row, by_scope.get(row[0], [])) for row in rows]
    checks += [_failed(name, 0, "rows for an unknown scope") for (name,) in orphans]
    return VerifyReport(
        path=str(path),
        ok=integrity == "ok" and all(c.ok for c in checks),
        integrity=integrity,
        schema_version=SCHEMA_VERSION,
        scopes=tuple(checks),
    )


def refusal(path: Path, report: VerifyReport) -> LedgerUnavailable:
    """The one-line LedgerUnavailable for a report that is not ok."""
    if report.integrity != "ok":
        return LedgerUnavailable(
            f"ledger {path} failed its integrity check ({report.integrity}); every charge is refused; "
            "restore it from a backup"
        )
    bad = next(c for c in report.scopes if not c.ok)
    return tampered(path, bad.scope, bad.detail)
