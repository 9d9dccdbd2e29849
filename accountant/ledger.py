"""The persistent privacy ledger: scopes with fixed mechanisms, charged before any output is released.

Privacy model. Each scope (one per index shard) fixes one mechanism at creation: a Poisson-subsampled (rate q)
Gaussian (std sigma) over the mean of k unit-norm neighbour embeddings, L2 sensitivity 2/k under add/remove-one
adjacency, noise multiplier z = sigma * k / 2, accounted with the dp-accounting RDP accountant on the scope's
stored order grid. Because (k, q, sigma) are fixed in advance, "refuse once epsilon(delta) would exceed the
budget" is a valid stopping rule (a prefix of a pre-declared non-adaptive composition).

State. The running RDP vector of a scope is ``n * c`` (n queries charged, c the cached RDP vector of one query),
so it is exact and reproducible; it is stored next to an append-only charge log (time, scope, event JSON, count,
caller, purpose, group id). Opening the ledger and :meth:`Ledger.verify` recompute every scope from the log;
every charge re-checks the stored vector against ``n * c``. Any disagreement is treated as tampering.

Boundary policy: strict ``epsilon_after <= epsilon_budget`` (see :mod:`accountant.budget`).

Fail closed: a missing (``create=False``), unreadable, corrupt, truncated, foreign, newer-schema or tampered
ledger raises :class:`LedgerUnavailable`; it is never recreated or reset to zero.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from accountant._audit import audit, refusal
from accountant._inputs import check_label, check_scope, check_scope_name, resolve_mechanism
from accountant._rows import (
    SCOPE_SQL,
    ScopeRow,
    check_running,
    parse_row,
    tampered,
    vector_to_blob,
)
from accountant._store import _Store, ledger_path
from accountant.budget import (
    check_delta,
    check_epsilon,
    epsilon_and_order,
    remaining_queries,
    within_budget,
)
from accountant.errors import AccountantInputError, BudgetExceeded
from accountant.events import (
    ADJACENCY,
    DEFAULT_ORDERS,
    DP_ACCOUNTING_VERSION,
    Mechanism,
)
from accountant.records import Charge, Receipt, ReceiptLine, ScopeStatus, VerifyReport

__all__ = ["Ledger"]


class Ledger:
    """Persistent (epsilon, delta) budgets for scopes, charged atomically before any release.

    Thread- and process-safe: every charge is one SQLite ``BEGIN IMMEDIATE`` transaction (WAL, synchronous=FULL),
    so P processes racing for a budget that fits m queries get exactly m successes.

    Args:
        path: ledger file (by convention ``<index_dir>/budget.sqlite``).
        create: create the file if it does not exist; with ``create=False`` a missing file raises.
        read_only: open with ``mode=ro``: never creates or writes anything; ``charge``/``create_scope`` refuse.
        timeout: seconds to wait for another writer's lock before raising :class:`LedgerUnavailable`.

    Raises:
        LedgerUnavailable: missing (create=False), corrupt, truncated, foreign, newer-schema or tampered file.
        AccountantInputError: the parent directory of a new ledger does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self._path = ledger_path(path)
        self._store = _Store(self._path, create=create, read_only=read_only, timeout=timeout)
        self._read_only = read_only
        self._created_scopes: set[str] = set()
        try:
            report = self._audit()
        except BaseException:
            self._store.discard(frozenset())
            raise
        if not report.ok:
            self._store.discard(frozenset())
            raise refusal(self._path, report)

    @property
    def path(self) -> Path:
        """Absolute path of the ledger file."""
        return self._path

    @property
    def created(self) -> bool:
        """True if this object created the ledger file (it did not exist when the ledger was opened)."""
        return self._store.created

    def close(self) -> None:
        """Close this process's connections; the object is unusable afterwards."""
        self._store.close()

    def discard(self) -> bool:
        """Undo a creation that failed midway: close, and delete the file if this object created it.

        The file is deleted only if it holds no charge and no scope other than those this object created, so an
        existing ledger, or one another process has started using, is never removed. Never raises.

        Returns:
            Whether the file was deleted.
        """
        return self._store.discard(frozenset(self._created_scopes))

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------------------
    def _load(self, conn: sqlite3.Connection, name: str) -> ScopeRow:
        row = conn.execute(SCOPE_SQL + " WHERE s.name = ?", (name,)).fetchone()
        if row is None:
            raise AccountantInputError(
                f"scope '{name}' is not in ledger {self._path}; create it with 'dprdm budget init' "
                f"(existing: {', '.join(self._names(conn)) or 'none'})"
            )
        try:
            return parse_row(row)
        except ValueError as err:
            raise tampered(self._path, name, f"unreadable scope row: {err}") from err

    @staticmethod
    def _names(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM scopes ORDER BY name")]

    def scopes(self) -> list[str]:
        """Names of all scopes, sorted."""
        with self._store.snapshot("listing scopes") as conn:
            return self._names(conn)

    def mechanism(self, scope: str) -> Mechanism:
        """The fixed mechanism of ``scope``."""
        with self._store.snapshot("reading a scope") as conn:
            return self._load(conn, scope).mechanism

    def status(self, scope: str) -> ScopeStatus:
        """Budget state of ``scope``: epsilon spent (with its optimal order) and exact queries remaining.

        Raises:
            AccountantInputError: unknown scope.
            LedgerUnavailable: unreadable or tampered ledger.
        """
        with self._store.snapshot("reading a scope") as conn:
            s = self._load(conn, scope)
        check_running(self._path, s)
        eps, order = epsilon_and_order(s.per_query, s.queries, delta=s.delta, orders=s.orders)
        left = remaining_queries(
            s.per_query, s.queries, epsilon_budget=s.epsilon, delta=s.delta, orders=s.orders
        )
        return ScopeStatus(
            scope=s.name,
            epsilon_budget=s.epsilon,
            delta=s.delta,
            epsilon_spent=eps,
            optimal_order=order,
            queries_charged=s.queries,
            queries_remaining=left,
            k=s.mechanism.k,
            q=s.mechanism.q,
            sigma=s.mechanism.sigma,
            noise_multiplier=s.mechanism.noise_multiplier,
            records=s.records,
            orders=len(s.orders),
            dp_accounting_version=s.version,
            created=s.created,
        )

    def history(self, scope: str | None = None) -> list[Charge]:
        """Charge-log rows in commit order, for one scope or all."""
        sql = "SELECT id, group_id, time, scope, event, count, caller, purpose FROM charges"
        params: tuple = ()
        if scope is not None:
            sql, params = sql + " WHERE scope = ?", (scope,)
        rows = self._store.read("reading the charge log", sql + " ORDER BY id", params)
        return [
            Charge(
                id=r[0],
                group_id=r[1],
                time=r[2],
                scope=r[3],
                event=r[4],
                count=r[5],
                caller=r[6],
                purpose=r[7],
            )
            for r in rows
        ]

    # -- verification ---------------------------------------------------------------------------------------
    def _audit(self) -> VerifyReport:
        with self._store.snapshot("verifying") as conn:
            return audit(conn, self._path)

    def verify(self) -> VerifyReport:
        """Recompute every scope from the charge log and compare with the stored running vectors.

        Returns:
            The report (every scope ok).

        Raises:
            LedgerUnavailable: integrity failure or any scope mismatch (tampering); names the first bad scope.
        """
        report = self._audit()
        if not report.ok:
            raise refusal(self._path, report)
        return report

    # -- writing --------------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self._read_only:
            raise AccountantInputError(
                f"ledger {self._path} was opened read-only; open it with read_only=False"
            )

    def create_scope(
        self,
        name: str,
        *,
        epsilon: float,
        delta: float,
        mechanism: Mechanism | None = None,
        sigma: float | None = None,
        queries: int | None = None,
        k: int | None = None,
        q: float | None = None,
        records: int | None = None,
        orders: Sequence[float] = DEFAULT_ORDERS,
    ) -> ScopeStatus:
        """Create a scope with a fixed mechanism and an (epsilon, delta) budget.

        Give either ``mechanism``, or ``k`` and ``q`` plus exactly one of ``sigma`` or ``queries`` (then sigma
        is calibrated with :func:`accountant.calibrate_sigma` so that ``queries`` queries fit).

        Args:
            name: scope name (the shard name).
            epsilon: budget epsilon (> 0). delta: budget delta, in (0, 1) and < 1/records when records is given.
            records: number of records N protected by the scope (enables the delta < 1/N check).
            orders: RDP order grid (stored with the scope; default dp-accounting 0.6.0's 156 orders).

        Raises:
            AccountantInputError: bad or conflicting parameters, delta >= 1/N, not even one query fits, or the
                scope already exists (a different mechanism needs a new scope name).
            LedgerUnavailable: the ledger cannot be written.
        """
        self._writable()
        name = check_scope_name(name)
        epsilon = check_epsilon(epsilon)
        delta = check_delta(delta, records=records, scope=name)
        mech = resolve_mechanism(
            mechanism,
            sigma=sigma,
            queries=queries,
            k=k,
            q=q,
            epsilon=epsilon,
            delta=delta,
            orders=tuple(orders),
        )
        orders_t, _ = check_scope(
            name, epsilon=epsilon, delta=delta, mechanism=mech, records=records, orders=orders
        )
        with self._store.transaction("creating a scope") as conn:
            if conn.execute("SELECT 1 FROM scopes WHERE name = ?", (name,)).fetchone():
                raise AccountantInputError(
                    f"scope '{name}' already exists in ledger {self._path}; a scope's mechanism and budget are "
                    "fixed, so use a new scope name"
                )
            conn.execute(
                "INSERT INTO scopes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    epsilon,
                    delta,
                    mech.k,
                    mech.q,
                    mech.sigma,
                    ADJACENCY.name,
                    json.dumps(list(orders_t)),
                    DP_ACCOUNTING_VERSION,
                    records,
                    time.time(),
                ),
            )
            conn.execute(
                "INSERT INTO spend VALUES (?, 0, ?)", (name, vector_to_blob(np.zeros(len(orders_t))))
            )
        self._created_scopes.add(name)
        return self.status(name)

    def charge(
        self,
        scope_or_scopes: str | Sequence[str],
        *,
        count: int = 1,
        caller: str | None = None,
        purpose: str | None = None,
    ) -> Receipt:
        """Charge ``count`` queries to every given scope in ONE transaction, or to none of them.

        Runs ``BEGIN IMMEDIATE``; for each scope reads the running RDP vector, checks it against the
        charged count, computes epsilon after the charge; refuses if ANY scope would exceed its budget (strict
        policy); otherwise appends the log rows, updates the running vectors and commits (fsync). Release output
        only after this returns.

        Raises:
            BudgetExceeded: some scope would exceed its budget; nothing was recorded.
            LedgerUnavailable: the ledger is locked too long, unreadable or tampered with; nothing was recorded.
            AccountantInputError: unknown scope, duplicate scopes, bad count or labels.
        """
        self._writable()
        names = [scope_or_scopes] if isinstance(scope_or_scopes, str) else list(scope_or_scopes)
        if not names or len(set(names)) != len(names):
            raise AccountantInputError(f"charge needs distinct scope names; found {names!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AccountantInputError(f"count must be an integer >= 1; found {count!r}")
        caller, purpose = check_label("caller", caller), check_label("purpose", purpose)
        group = uuid.uuid4().hex
        lines: list[ReceiptLine] = []
        with self._store.transaction("charging") as conn:
            now = time.time()
            updates = []
            for name in names:
                s = self._load(conn, name)
                check_running(self._path, s)
                total = s.queries + count
                eps, order = epsilon_and_order(s.per_query, total, delta=s.delta, orders=s.orders)
                if not within_budget(eps, s.epsilon):
                    raise BudgetExceeded(
                        f"scope '{name}' budget exhausted: {count} more quer{'y' if count == 1 else 'ies'} after "
                        f"{s.queries} would spend epsilon={eps:.6g} > budget {s.epsilon:g} at delta={s.delta:g}; "
                        "nothing was charged or released; stop querying this scope or create a new scope/index"
                    )
                updates.append((name, total, vector_to_blob(total * s.per_query), s.event_json))
                lines.append(
                    ReceiptLine(
                        scope=name,
                        count=count,
                        epsilon_spent=eps,
                        optimal_order=order,
                        queries_charged=total,
                        epsilon_budget=s.epsilon,
                    )
                )
            for name, total, rdp_blob, event_text in updates:
                conn.execute(
                    "INSERT INTO charges (group_id, time, scope, event, count, caller, purpose) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (group, now, name, event_text, count, caller, purpose),
                )
                conn.execute("UPDATE spend SET queries = ?, rdp = ? WHERE scope = ?", (total, rdp_blob, name))
        return Receipt(group_id=group, time=now, caller=caller, purpose=purpose, lines=tuple(lines))
