"""Recompute every scope of a ledger from its append-only charge log (on open and in ``Ledger.verify``).

Checks: the backend's storage check (SQLite ``quick_check``, PostgreSQL guard triggers present); each scope row parses; the logged query count equals the recorded one; the other
events (training runs, ...) replayed in log order give the stored ``extra`` vector, the admission log gives the
stored ``carried`` vector W (elementwise max), and the running vector equals ``(carried + extra) + n * c``
(relative tolerance 1e-9; the replay performs the same float operations as the charges, so it is bit-exact in
practice); no rows refer to unknown scopes. Cost: one GROUP BY over the log, one cached per-event RDP vector per
distinct event, plus an ordered pass over a scope's rows only when it holds non-query events.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting as dpa
import numpy as np

from accountant._rows import RTOL, SCOPE_SQL, parse_row, tampered, vector_from_blob
from accountant.backends._schema import SCHEMA_VERSION
from accountant.budget import filter_epsilon, scaled, within_budget
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


def _query_events(s) -> tuple[dpa.DpEvent, ...]:
    """Events that count as one query of the scope's mechanism: today's, and the schema-v1 form.

    Schema v1 logged the textbook multiplier sigma*k/2; since v2 a query is logged with the (at most a few ulps
    smaller) multiplier OpenDP's map states. Both are the same query; its RDP is recomputed with today's.
    """
    gaussian = dpa.GaussianDpEvent(s.mechanism.sigma * s.mechanism.k / 2.0)
    legacy = gaussian if s.mechanism.q == 1.0 else dpa.PoissonSampledDpEvent(s.mechanism.q, gaussian)
    return (s.mechanism.dp_event(), legacy)


def _replay_in_order(
    conn: Any, s, queries: tuple[dpa.DpEvent, ...], admissions: list, details: list[str]
) -> tuple[np.ndarray, int]:
    """Replay charges and admissions in log order with the charges' own float operations.

    Returns the sum of the non-query events (``extra``) and their count, and notes in ``details`` any charge the
    filter would have refused when it was made (an admission logged after charge id j applies before j + 1).
    """
    extra, events, n = np.zeros_like(s.per_query), 0, 0
    carried = np.zeros_like(s.per_query)
    pending = list(admissions)
    i = s.order_index
    for charge_id, event_text, count in conn.execute(
        "SELECT id, event, count FROM charges WHERE scope = ? ORDER BY id", (s.name,)
    ):
        while pending and pending[0][0] < charge_id:
            carried = np.maximum(carried, pending.pop(0)[1])
        try:
            event = event_from_json(event_text)
        except LedgerUnavailable:
            continue  # already reported
        if event in queries:
            n += count
        else:
            extra = extra + count * event_rdp(event, s.orders)
            events += count
        spent = float(((carried + extra) + scaled(n, s.per_query))[i])
        # 1e-12 relative slack: schema-v1 queries were admitted with the textbook multiplier, a few ulps off
        if not within_budget(
            filter_epsilon(spent, order=s.filter_order, delta=s.delta), s.epsilon * (1 + 1e-12)
        ):
            details.append(f"charge {charge_id} exceeded the filter when it was made")
            break
    else:
        return extra, events
    for _, event_text, count in conn.execute(  # finish the sums after a reported violation
        "SELECT id, event, count FROM charges WHERE scope = ? AND id > ? ORDER BY id", (s.name, charge_id)
    ):
        event = event_from_json(event_text)
        if event not in queries:
            extra = extra + count * event_rdp(event, s.orders)
            events += count
    return extra, events


def _check_scope(conn: Any, row: tuple, logged: list[tuple[str, int]]) -> ScopeCheck:
    try:
        s = parse_row(row)
    except ValueError as err:
        return _failed(row[0], int(row[11] or 0), f"unreadable scope row: {err}")
    queries = _query_events(s)
    total = 0
    others = False
    details = []
    for event_text, count in logged:
        try:
            event = event_from_json(event_text)
        except LedgerUnavailable:
            details.append("unreadable event in the charge log")
            continue
        if event in queries:
            total += count
        else:
            others = True
    admissions = []
    for after_charge, blob in conn.execute(
        "SELECT after_charge, rdp FROM admissions WHERE scope = ? ORDER BY id", (s.name,)
    ):
        admitted = vector_from_blob(blob) if isinstance(blob, bytes) else None
        if admitted is None or admitted.shape != s.per_query.shape:
            details.append("unreadable admission in the log")
            continue
        admissions.append((int(after_charge), admitted))
    carried = np.zeros_like(s.per_query)
    for _, admitted in admissions:
        carried = np.maximum(carried, admitted)
    extra, events = np.zeros_like(s.per_query), 0
    if others or admissions:
        extra, events = _replay_in_order(conn, s, queries, admissions, details)
    recomputed = (carried + extra) + scaled(total, s.per_query)
    worst = 0.0
    for stored, replayed in ((s.rdp, recomputed), (s.carried, carried), (s.extra, extra)):
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = np.abs(stored - replayed) / np.maximum(np.abs(replayed), np.finfo(float).tiny)
        diff = np.where(stored == replayed, 0.0, diff)
        if np.isnan(diff).any():
            worst = math.inf
        elif diff.size:
            worst = max(worst, float(diff.max()))
    if total != s.queries:
        details.append(f"{total} queries in the charge log but {s.queries} recorded")
    if events != s.events:
        details.append(
            f"charge log holds an event of another mechanism than the scope's query ({events} such events "
            f"logged, {s.events} recorded)"
        )
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


def audit(conn: Any, location: str, integrity: str) -> VerifyReport:
    """Build the verification report inside the caller's read transaction (never raises on mismatch).

    ``integrity`` is the backend's storage check ('ok' or the damage found).
    """
    rows = conn.execute(SCOPE_SQL + " ORDER BY s.name").fetchall()
    logged = conn.execute("SELECT scope, event, SUM(count) FROM charges GROUP BY scope, event").fetchall()
    orphans = conn.execute(
        "SELECT scope FROM spend WHERE scope NOT IN (SELECT name FROM scopes) "
        "UNION SELECT scope FROM charges WHERE scope NOT IN (SELECT name FROM scopes) "
        "UNION SELECT scope FROM admissions WHERE scope NOT IN (SELECT name FROM scopes)"
    ).fetchall()
    by_scope: dict[str, list[tuple[str, int]]] = {}
    for name, event_text, total in logged:
        by_scope.setdefault(name, []).append((event_text, int(total)))
    checks = [_check_scope(conn, row, by_scope.get(row[0], [])) for row in rows]
    checks += [_failed(name, 0, "rows for an unknown scope") for (name,) in orphans]
    return VerifyReport(
        path=location,
        ok=integrity == "ok" and all(c.ok for c in checks),
        integrity=integrity,
        schema_version=SCHEMA_VERSION,
        scopes=tuple(checks),
    )


def refusal(path: str, report: VerifyReport) -> LedgerUnavailable:
    """The one-line LedgerUnavailable for a report that is not ok."""
    if report.integrity != "ok":
        return LedgerUnavailable(
            f"ledger {path} failed its integrity check ({report.integrity}); every charge is refused; "
            "restore it from a backup"
        )
    bad = next(c for c in report.scopes if not c.ok)
    return tampered(path, bad.scope, bad.detail)
