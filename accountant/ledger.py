"""The persistent privacy ledger: a fixed-order Renyi filter per scope, charged before any output is released.

Privacy model (issues 9 and 11).

* **Filter.** Each scope (one per index shard) fixes, when it is created, an RDP order alpha* and an
  (epsilon, delta) budget. A charge of any supported event (one retrieval query of the scope's mechanism, or a
  Gaussian / Poisson-sampled Gaussian / self-composed event such as a DP-SGD training run
  ``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)``) is admitted iff
  ``compute_epsilon([alpha*], [W(alpha*) + sum of charged RDP(alpha*) + event RDP(alpha*)], delta) <= epsilon``
  (strict; NaN refused). This is the Renyi filter of Feldman & Zrnic 2021 ("Individual Privacy Accounting via a
  Renyi Filter", NeurIPS 2021, arXiv 2008.11193, Thm 3.1): when every event is chosen adaptively and the
  interaction halts before the sum of RDP at a fixed order alpha exceeds B, the whole interaction is
  (alpha, B)-RDP; the (epsilon, delta) conversion of dp-accounting (Balle et al. 2020, Thm 21) then applies.
  It stays valid when many processes charge one scope concurrently (Haney, Shoemate, Tian, Vadhan, Vyrros, Xu,
  Zhang, CCS 2023, arXiv 2309.05901: filters for fixed-order Renyi DP under concurrent composition). alpha* is
  the optimal order for the most queries of the scope's mechanism that fit, so a scope holding only its
  queries admits exactly as many as the multi-order non-adaptive count (``accountant.budget.filter_order``).
  Taking the best of many orders after the fact is NOT done: it is licensed only for non-adaptive sequences.
* **Tombstones.** ``retire(scope, ids)`` records, per content id, ``tombstone(id) = max(tombstone(id), R)``
  with R the scope's running RDP vector: an upper bound on every order of the loss the record has accrued.
  ``admit(scope, ids)`` (and ``create_scope(members=ids)``) sets the scope's carried vector
  ``W = max(W, tombstone(id))`` elementwise; its running RDP is ``W + (events charged since)``. Each record's
  whole history therefore obeys the new scope's filter: its old events contribute at most W(alpha*) and its new
  ones exactly the charged sum, so the filter sum of the record's complete (adaptively chosen) sequence is at
  most the scope's filter sum; partial sums only grow (RDP is non-negative), so halting the scope when that sum
  would pass the budget halts every prefix in time. Admission into a scope whose W(alpha*) already exceeds the
  budget is allowed and simply exhausts the scope (no event is admitted after it). What this cannot catch:
  a near-duplicate of a record is a different content id and carries nothing.
* **delta < 1/N at every charge**, for every scope, with N the ``records=`` value of the charge or else the N
  stored at creation; neither known, or delta >= 1/N, refuses the charge (:class:`DeltaRefused`, exit 3).

State. Per scope: own queries n, the carried vector W (admission log), the sum E of other events in log order,
and the running vector ``(W + E) + n * c`` (c = RDP of one query). All are replayed exactly by :meth:`verify`
(and on every open) from the append-only charge and admission logs; any disagreement is tampering.

Fail closed: a missing (``create=False``), unreadable, corrupt, truncated, foreign, newer-schema or tampered
ledger raises :class:`LedgerUnavailable`; it is never recreated or reset to zero. Schema v1 ledgers are
migrated on a writable open (each scope gets its alpha*, so it keeps its admissible query count).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dp_accounting as dpa
import numpy as np

from accountant._audit import audit, refusal
from accountant._inputs import (
    PreparedScope,
    check_ids,
    check_label,
    check_records_map,
    check_scope_name,
    prepare_scope,
)
from accountant._rows import (
    SCOPE_SQL,
    ScopeRow,
    check_running,
    orders_from_json,
    parse_row,
    status_of,
    tampered,
    vector_to_blob,
)
from accountant._tombstones import admit_into, retire_from
from accountant.backends import LedgerBackend, open_backend
from accountant.budget import (
    filter_epsilon,
    filter_order,
    within_budget,
)
from accountant.errors import AccountantError, AccountantInputError, BudgetExceeded, DeltaRefused
from accountant.events import (
    ADJACENCY,
    DEFAULT_ORDERS,
    DP_ACCOUNTING_VERSION,
    Mechanism,
    check_event,
    event_rdp,
    event_to_json,
)
from accountant.records import (
    Charge,
    ChargeRequest,
    Receipt,
    ReceiptLine,
    ScopeSpec,
    ScopeStatus,
    VerifyReport,
)

__all__ = ["Ledger"]


def _migration_filter_order(
    epsilon: float, delta: float, k: int, q: float, sigma: float, orders: str
) -> float:
    """alpha* of a schema-v1 scope: optimal for the most queries its mechanism and budget admit."""
    grid = orders_from_json(orders)
    vector = event_rdp(Mechanism(k=k, q=q, sigma=sigma).dp_event(), grid)
    return filter_order(vector, epsilon=float(epsilon), delta=float(delta), orders=grid)


class _Step(NamedTuple):
    """One scope after a planned charge (not yet written)."""

    after: ScopeRow
    epsilon: float
    event_text: str


class Ledger:
    """Persistent (epsilon, delta) budgets per scope: a fixed-order Renyi filter, charged before any release.

    Thread- and process-safe: every charge is one transaction that locks what it charges (SQLite: ``BEGIN
    IMMEDIATE``, WAL, synchronous=FULL; PostgreSQL: ``SELECT ... FOR UPDATE`` on the scopes' rows in name order,
    synchronous_commit=on), reads the running state, checks the filter and writes, so P processes (on any number
    of hosts, for PostgreSQL) racing for a budget that fits m queries get exactly m successes (and the filter
    stays valid under concurrency, Haney et al. 2023).

    Args:
        path: ledger file (by convention ``<index_dir>/budget.sqlite``), or a PostgreSQL URL
            ``postgresql://user@host:port/db[?schema=NAME]`` (one ledger per schema, default ``dprdm``; needs
            ``pip install 'dprdm[scale]'``).
        create: create the ledger if it does not exist; with ``create=False`` a missing ledger raises.
        read_only: open with ``mode=ro``: never creates or writes anything; writes refuse.
        timeout: seconds to wait for another writer's lock before raising :class:`LedgerUnavailable`.

    Raises:
        LedgerUnavailable: missing (create=False), corrupt, truncated, foreign, newer-schema or tampered file,
            or an old schema opened read-only (it must be migrated by a writable open first).
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
        self._store: LedgerBackend = open_backend(
            path,
            create=create,
            read_only=read_only,
            timeout=timeout,
            filter_order=_migration_filter_order,
        )
        self._where = self._store.location
        self._read_only = read_only
        self._created_scopes: set[str] = set()
        self._ledger_id = ""
        try:
            report = self._audit()
            self._ledger_id = self._store.ledger_id()
        except BaseException:
            self._store.discard(frozenset())
            raise
        if not report.ok:
            self._store.discard(frozenset())
            raise refusal(self._where, report)

    @property
    def path(self) -> Path | None:
        """Absolute path of the ledger file (None for a PostgreSQL ledger: see :attr:`location`)."""
        return self._store.path

    @property
    def location(self) -> str:
        """Where the ledger lives: ``str(path)`` for SQLite, the ``postgresql://`` URL without password."""
        return self._store.location

    @property
    def ledger_id(self) -> str:
        """The ledger's identity: a uuid4 hex written at creation (or at the v1 -> v2 migration)."""
        return self._ledger_id

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
    def _load(self, conn: Any, name: str) -> ScopeRow:
        row = conn.execute(SCOPE_SQL + " WHERE s.name = ?", (name,)).fetchone()
        if row is None:
            raise AccountantInputError(
                f"scope '{name}' is not in ledger {self._where}; create it with 'dprdm budget init' "
                f"(existing: {', '.join(self._names(conn)) or 'none'})"
            )
        try:
            s = parse_row(row)
        except ValueError as err:
            raise tampered(self._where, name, f"unreadable scope row: {err}") from err
        check_running(self._where, s)
        return s

    @staticmethod
    def _names(conn: Any) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM scopes ORDER BY name")]

    def scopes(self) -> list[str]:
        """Names of all scopes, sorted."""
        with self._store.snapshot("listing scopes") as conn:
            return self._names(conn)

    def mechanism(self, scope: str) -> Mechanism:
        """The query mechanism of ``scope``."""
        with self._store.snapshot("reading a scope") as conn:
            return self._load(conn, scope).mechanism

    def status(self, scope: str) -> ScopeStatus:
        """Budget state of ``scope``: the filter's epsilon spent (at alpha*) and exact queries remaining.

        Raises:
            AccountantInputError: unknown scope.
            LedgerUnavailable: unreadable or tampered ledger.
        """
        with self._store.snapshot("reading a scope") as conn:
            s = self._load(conn, scope)
        return status_of(s)

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
            return audit(conn, self._where, self._store.integrity(conn))

    def verify(self) -> VerifyReport:
        """Replay every scope from the charge and admission logs and compare with the stored running state.

        Returns:
            The report (every scope ok).

        Raises:
            LedgerUnavailable: integrity failure or any scope mismatch (tampering); names the first bad scope.
        """
        report = self._audit()
        if not report.ok:
            raise refusal(self._where, report)
        return report

    # -- creating scopes ------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self._read_only:
            raise AccountantInputError(
                f"ledger {self._where} was opened read-only; open it with read_only=False"
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
        members: Sequence[int] | np.ndarray | None = None,
        orders: Sequence[float] = DEFAULT_ORDERS,
        alpha: float | None = None,
    ) -> ScopeStatus:
        """Create a scope: a query mechanism, an (epsilon, delta) budget and a fixed filter order alpha*.

        Give either ``mechanism``, or ``k`` and ``q`` plus exactly one of ``sigma`` or ``queries`` (then sigma
        is calibrated with :func:`accountant.calibrate_sigma` so that ``queries`` queries fit).

        Args:
            name: scope name (the shard name).
            epsilon: budget epsilon (> 0). delta: budget delta, in (0, 1) and < 1/records when records is given.
            records: number of records N protected by the scope (delta < 1/N is checked at every charge against
                the charge's ``records=`` or else this N; without either every charge is refused).
            members: content ids of the records the scope protects now; their tombstoned loss is carried in.
            orders: RDP order grid (stored with the scope; default dp-accounting 0.6.0's 156 orders).
            alpha: the filter order alpha* (default: optimal for the most queries of the mechanism that fit;
                pass it when the plan has other events, e.g. a training run; added to ``orders`` if absent).

        Raises:
            AccountantInputError: bad or conflicting parameters, delta >= 1/N, not even one query fits, or the
                scope already exists (a different mechanism needs a new scope name).
            LedgerUnavailable: the ledger cannot be written.
        """
        spec = ScopeSpec(
            name=name,
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            sigma=sigma,
            queries=queries,
            k=k,
            q=q,
            records=records,
            members=members,
            orders=orders,
            alpha=alpha,
        )
        return self.create_scopes([spec])[0]

    def create_scopes(self, specs: Sequence[ScopeSpec]) -> list[ScopeStatus]:
        """Create several scopes all-or-none: every check before any write, then one transaction.

        Each spec is checked as :meth:`create_scope` does (including that one query fits and delta < 1/N); then,
        in one ``BEGIN IMMEDIATE`` transaction, no scope may exist yet and all are inserted (with their members'
        tombstones carried in). If anything fails, nothing is written.

        Raises:
            AccountantInputError: a bad spec (the first one found), duplicate names, or a scope that exists.
            LedgerUnavailable: the ledger cannot be written.
        """
        self._writable()
        return self._create_prepared(self._prepare_all(specs))

    @staticmethod
    def _prepare_all(specs: Sequence[ScopeSpec]) -> list[PreparedScope]:
        specs = list(specs)
        if not specs:
            raise AccountantInputError("create_scopes needs at least one ScopeSpec; found none")
        prepared = [prepare_scope(spec) for spec in specs]
        names = [p.name for p in prepared]
        if len(set(names)) != len(names):
            raise AccountantInputError(f"scope names must be distinct; found {sorted(names)}")
        return prepared

    def _create_prepared(self, prepared: list[PreparedScope]) -> list[ScopeStatus]:
        names = [p.name for p in prepared]
        with self._store.transaction("creating scopes", exclusive=True) as conn:
            existing = sorted(set(names) & set(self._names(conn)))
            if existing:
                which = (
                    f"scope '{existing[0]}' already exists"
                    if len(existing) == 1
                    else f"scopes {', '.join(existing)} already exist"
                )
                raise AccountantInputError(
                    f"{which} in ledger {self._where}; a scope's mechanism and budget are fixed, so use a new scope "
                    "name"
                )
            now = time.time()
            for p in prepared:
                self._insert_scope(conn, p, now)
            statuses = [status_of(self._load(conn, name)) for name in names]
        self._created_scopes.update(names)
        return statuses

    @classmethod
    def initialise(
        cls, path: str | os.PathLike[str], specs: Sequence[ScopeSpec], *, timeout: float = 30.0
    ) -> tuple[Ledger, list[ScopeStatus]]:
        """``budget init`` as a library call: check every spec, then open (or create) the ledger and add them.

        Every check (names, budgets, delta < 1/N, calibration, one query fits) runs before the file is touched;
        then :meth:`create_scopes` runs in one transaction. If anything fails after the file was created by this
        call, the new file is removed again (an existing ledger is never removed).

        Returns:
            The open ledger and the new scopes' statuses.

        Raises:
            AccountantInputError: a bad spec or an existing scope name; LedgerUnavailable: unusable ledger.
        """
        prepared = cls._prepare_all(specs)
        book = cls(path, create=True, timeout=timeout)
        try:
            statuses = book._create_prepared(prepared)
        except BaseException:
            book.discard()
            raise
        return book, statuses

    def _insert_scope(self, conn: Any, p: PreparedScope, now: float) -> None:
        conn.execute(
            "INSERT INTO scopes (name, epsilon, delta, k, q, sigma, adjacency, orders, dp_accounting_version, "
            "records, created, filter_order) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.name,
                p.epsilon,
                p.delta,
                p.mechanism.k,
                p.mechanism.q,
                p.mechanism.sigma,
                ADJACENCY.name,
                json.dumps(list(p.orders)),
                DP_ACCOUNTING_VERSION,
                p.records,
                now,
                p.filter_order,
            ),
        )
        zeros = vector_to_blob(np.zeros(len(p.orders)))
        conn.execute(
            "INSERT INTO spend (scope, queries, rdp, events, carried, extra) VALUES (?, 0, ?, 0, ?, ?)",
            (p.name, zeros, zeros, zeros),
        )
        if p.members.size:
            admit_into(conn, self._load(conn, p.name), p.members, now)

    # -- charging -------------------------------------------------------------------------------------------
    def _check_delta(self, s: ScopeRow, records: dict[str, int]) -> None:
        n = records.get(s.name, s.records)
        if n is None:
            raise DeltaRefused(
                f"scope '{s.name}' has no record count N, so delta < 1/N cannot be checked; nothing was charged; "
                f"pass records={{'{s.name}': N}} with the scope's current size (or create it with records=N)"
            )
        if not s.delta < 1.0 / n:
            # The exact N is not in the message: it is a statistic of the private shard and this line may reach
            # whoever asked for the charge; only the refusal itself (one bit: N >= 1/delta) is unavoidable.
            raise DeltaRefused(
                f"scope '{s.name}' delta={s.delta:g} is not below 1/N for its current record count N; nothing was "
                "charged; the shard holds 1/delta records or more, so queries stay refused until it holds fewer "
                "(a scope's delta is fixed)"
            )

    def _plan(self, s: ScopeRow, event: dpa.DpEvent | None, count: int, records: dict[str, int]) -> _Step:
        """The scope after charging ``count`` x ``event`` (None = its own query) and the filter's epsilon then."""
        self._check_delta(s, records)
        if event is None or event == s.mechanism.dp_event():
            after = s._replace(queries=s.queries + count)
            text = s.event_json
        else:
            after = s._replace(extra=s.extra + count * event_rdp(event, s.orders), events=s.events + count)
            text = event_to_json(event)
        total = after.total()
        after = after._replace(rdp=total)
        eps = filter_epsilon(float(total[s.order_index]), order=s.filter_order, delta=s.delta)
        return _Step(after=after, epsilon=eps, event_text=text)

    @staticmethod
    def _charge_args(
        scopes: str | Sequence[str], event: Any, count: int, records: Mapping[str, int] | None
    ) -> tuple[list[str], dpa.DpEvent | None, dict[str, int]]:
        names = [scopes] if isinstance(scopes, str) else list(scopes)
        if not names or len(set(names)) != len(names):
            raise AccountantInputError(f"charge needs distinct scope names; found {names!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AccountantInputError(f"count must be an integer >= 1; found {count!r}")
        return names, (None if event is None else check_event(event)), check_records_map(records)

    def charge(
        self,
        scopes: str | Sequence[str],
        *,
        event: dpa.DpEvent | None = None,
        count: int = 1,
        records: Mapping[str, int] | None = None,
        caller: str | None = None,
        purpose: str | None = None,
    ) -> Receipt:
        """Charge ``count`` x ``event`` to every given scope in ONE transaction, or to none of them.

        ``event=None`` is one retrieval query of each scope's own mechanism; otherwise a supported dp-accounting
        event (Gaussian, PoissonSampled(Gaussian), SelfComposed of those; e.g. a whole DP-SGD run). Inside
        ``BEGIN IMMEDIATE``, for each scope: delta < 1/N (N = ``records[scope]`` else the stored N), then the
        fixed-order Renyi filter (Feldman & Zrnic 2021, Thm 3.1) admits iff
        ``compute_epsilon([alpha*], [R(alpha*) + count * event(alpha*)], delta) <= epsilon`` (strict; NaN
        refused). If every scope admits, the log rows and running vectors are written and committed (fsync).
        Release output only after this returns.

        Returns:
            The receipt; ``receipt.statuses`` is each scope's status right after the charge.

        Raises:
            BudgetExceeded: some scope's filter refuses; nothing was recorded.
            DeltaRefused: some scope's N is unknown or delta >= 1/N; nothing was recorded.
            LedgerUnavailable: the ledger is locked too long, unreadable or tampered with; nothing was recorded.
            AccountantInputError: unknown scope, duplicate scopes, unsupported event, bad count/records/labels.
        """
        self._writable()
        names, event, records = self._charge_args(scopes, event, count, records)
        caller, purpose = check_label("caller", caller), check_label("purpose", purpose)
        group = uuid.uuid4().hex
        with self._store.transaction("charging", scopes=names) as conn:
            now = time.time()
            steps = self._charge_in(conn, names, event, count, records, caller, purpose, group, now)
        return self._receipt(steps, count, group, now, caller, purpose)

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[Receipt | Exception]:
        """Group commit: several independent charges in ONE transaction and one fsync, each all-or-none.

        Each request is what one :meth:`charge` call would be. Inside one transaction that locks every scope of
        the group as :meth:`charge` does (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``FOR UPDATE`` on their rows in
        name order) they are checked and applied in the given order, each against the state left by the ones
        before it (so a budget that fits m queries admits exactly the first m that fit, as m separate charges
        would); a refused request writes nothing and the next one is still considered. The transaction then
        commits once (one WAL flush / fsync for the whole group). A receipt is valid only once this returns.

        Returns:
            One entry per request, in order: its :class:`Receipt`, or the exception :meth:`charge` would have
            raised for it (:class:`BudgetExceeded`, :class:`DeltaRefused`, :class:`AccountantInputError`, ...).

        Raises:
            LedgerUnavailable: the transaction itself failed (lock timeout, I/O); then NOTHING of the group was
                recorded, and every request is refused.
            AccountantInputError: the ledger was opened read-only.
        """
        self._writable()
        prepared: list[tuple[Any, ...] | Exception] = []
        for request in requests:
            try:
                names, event, records = self._charge_args(request.scopes, request.event, request.count, request.records)
                caller = check_label("caller", request.caller)
                purpose = check_label("purpose", request.purpose)
                prepared.append((names, event, request.count, records, caller, purpose, uuid.uuid4().hex))
            except AccountantError as err:
                prepared.append(err)
        planned: list[tuple[list[_Step], tuple[Any, ...]] | Exception] = []
        locked = sorted({name for item in prepared if not isinstance(item, Exception) for name in item[0]})
        with self._store.transaction("charging a group", scopes=locked) as conn:
            now = time.time()
            rows: dict[str, ScopeRow] = {}  # each scope read (and checked) once; then the state this group wrote
            for item in prepared:
                if isinstance(item, Exception):
                    planned.append(item)
                    continue
                names, event, count, records, caller, purpose, group = item
                try:
                    steps = self._charge_in(conn, names, event, count, records, caller, purpose, group, now, rows)
                except (BudgetExceeded, DeltaRefused, AccountantInputError) as err:
                    planned.append(err)  # checked before any write of this request: nothing of it was written
                    continue
                planned.append((steps, (count, group, now, caller, purpose)))
        # receipts after COMMIT (outside the write lock): nothing is released before the commit returned
        return [p if isinstance(p, Exception) else self._receipt(p[0], *p[1]) for p in planned]

    def _charge_in(
        self,
        conn: Any,
        names: list[str],
        event: dpa.DpEvent | None,
        count: int,
        records: dict[str, int],
        caller: str | None,
        purpose: str | None,
        group: str,
        now: float,
        rows: dict[str, ScopeRow] | None = None,
    ) -> list[_Step]:
        """Check every scope of one charge, then (only if all admit) write its rows; inside a transaction.

        ``rows`` (group commit) caches each scope's state within the one transaction: read and checked once, then
        the state the previous charges of the group wrote.
        """
        steps = []
        for name in names:
            s = rows[name] if rows is not None and name in rows else self._load(conn, name)
            step = self._plan(s, event, count, records)
            if not within_budget(step.epsilon, s.epsilon):
                what = "quer" + ("y" if count == 1 else "ies") if event is None else "event(s)"
                raise BudgetExceeded(
                    f"scope '{name}' budget exhausted: {count} more {what} after {s.queries} queries and "
                    f"{s.events} other events would spend epsilon={step.epsilon:.6g} > budget {s.epsilon:g} at "
                    f"delta={s.delta:g} (filter order {s.filter_order:g}); nothing was charged or released; "
                    "stop querying this scope"
                )
            steps.append(step)
        for step in steps:
            a = step.after
            conn.execute(
                "INSERT INTO charges (group_id, time, scope, event, count, caller, purpose) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (group, now, a.name, step.event_text, count, caller, purpose),
            )
            conn.execute(
                "UPDATE spend SET queries = ?, rdp = ?, events = ?, extra = ? WHERE scope = ?",
                (a.queries, vector_to_blob(a.rdp), a.events, vector_to_blob(a.extra), a.name),
            )
            if rows is not None:
                rows[a.name] = a
        return steps

    @staticmethod
    def _receipt(
        steps: list[_Step], count: int, group: str, now: float, caller: str | None, purpose: str | None
    ) -> Receipt:
        statuses = tuple(status_of(step.after) for step in steps)
        lines = tuple(
            ReceiptLine(
                scope=st.scope,
                count=count,
                epsilon_spent=st.epsilon_spent,
                optimal_order=st.optimal_order,
                queries_charged=st.queries_charged,
                epsilon_budget=st.epsilon_budget,
            )
            for st in statuses
        )
        return Receipt(
            group_id=group, time=now, caller=caller, purpose=purpose, lines=lines, statuses=statuses
        )

    def fits(
        self,
        scope: str | Sequence[str],
        *,
        event: dpa.DpEvent | None = None,
        count: int = 1,
        records: Mapping[str, int] | None = None,
    ) -> bool:
        """Dry run of :meth:`charge` (no write): would it be admitted by every scope right now?

        Returns False where :meth:`charge` would raise :class:`BudgetExceeded` or :class:`DeltaRefused`.

        Raises:
            AccountantInputError: as :meth:`charge` for bad arguments or an unknown scope.
            LedgerUnavailable: unreadable or tampered ledger.
        """
        names, event, records = self._charge_args(scope, event, count, records)
        with self._store.snapshot("checking a charge") as conn:
            rows = [self._load(conn, name) for name in names]
        try:
            return all(within_budget(self._plan(s, event, count, records).epsilon, s.epsilon) for s in rows)
        except DeltaRefused:
            return False

    # -- records that move: tombstones ------------------------------------------------------------------------
    def admit(self, scope: str, ids: Sequence[int] | np.ndarray) -> ScopeStatus:
        """Records join ``scope``: they bring their tombstoned loss (``W = max(W, tombstone(id))`` elementwise).

        Call it (from the index's commit hook) before the records become retrievable in the scope's shard. The
        admission is logged so :meth:`verify` replays W. Ids without a tombstone carry nothing.

        Why each record's whole history stays under the scope's filter (Feldman & Zrnic 2021, Thm 3.1, applied
        to the record's complete event sequence at this scope's alpha*): the record's earlier events sum to at
        most tombstone(id)(alpha*) <= W(alpha*) (a tombstone bounds the record's loss at every order; values from
        another grid are taken at the next larger order, RDP being non-decreasing in the order), and every later
        event is added to the scope's sum, which starts from W. So the record's filter sum is at most the
        scope's, and the scope halts before its sum passes the budget; RDP is non-negative, so partial sums only
        grow and every prefix is covered too. If W(alpha*) already exceeds the budget, the admission is still
        recorded and simply exhausts the scope: no later event is admitted, so nothing new touches the record.

        Returns:
            The scope's status after the admission.

        Raises:
            AccountantInputError: unknown scope or bad ids.
            LedgerUnavailable: the ledger cannot be written.
        """
        self._writable()
        scope = check_scope_name(scope)
        ids_a = check_ids(ids)
        with self._store.transaction("admitting records", scopes=[scope], exclusive=True) as conn:
            after = admit_into(conn, self._load(conn, scope), ids_a, time.time())
        return status_of(after)

    def retire(self, scope: str, ids: Sequence[int] | np.ndarray) -> int:
        """Records leave ``scope`` (removed, forgotten, moved): ``tombstone(id) = max(tombstone(id), R)``.

        R is the scope's running RDP vector (carried loss + every event charged), an upper bound, at every order
        of the scope's grid, on the loss each of its records has accrued. Tombstones only grow; they are kept on
        the grid of the first scope that wrote them (values at other orders are bounded by the next larger
        order, RDP being non-decreasing in the order). Call it before the removal commits.

        Returns:
            The number of ids tombstoned.

        Raises:
            AccountantInputError: unknown scope or bad ids.
            LedgerUnavailable: the ledger cannot be written.
        """
        self._writable()
        scope = check_scope_name(scope)
        ids_a = check_ids(ids)
        with self._store.transaction("retiring records", scopes=[scope], exclusive=True) as conn:
            s = self._load(conn, scope)
            retire_from(conn, s, ids_a, time.time())
        return int(ids_a.size)
