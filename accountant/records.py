"""Frozen result records of the ledger: scope status, charge receipts, charge-log rows and verification reports.

Each record has a ``to_dict()`` used by the CLI's ``--json``. None of them holds anything derived from private
records: only budget parameters, counts and epsilon spent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accountant.events import Mechanism

__all__ = ["Charge", "ChargeRequest", "Receipt", "ReceiptLine", "ScopeCheck", "ScopeSpec", "ScopeStatus", "VerifyReport"]

#: dp-accounting 0.6.0's 156 default RDP orders (also ``accountant.DEFAULT_ORDERS``); None here means that grid.
_DEFAULT = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeRequest:
    """One charge of a group commit (:meth:`accountant.Ledger.charge_many`): the arguments of ``Ledger.charge``.

    Attributes:
        scopes: scope names charged together (all-or-none).
        event: a dp-accounting event, or None for one query of each scope's own mechanism.
        count, records, caller, purpose: as :meth:`accountant.Ledger.charge`.
    """

    scopes: tuple[str, ...] | str
    event: Any = None
    count: int = 1
    records: Mapping[str, int] | None = None
    caller: str | None = None
    purpose: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeSpec:
    """One scope to create (:meth:`accountant.Ledger.create_scopes`): the keyword arguments of ``create_scope``.

    Attributes:
        name: scope name (the shard name).
        epsilon, delta: the budget; delta < 1/records when records is given.
        mechanism: the scope's query mechanism, or ``k``/``q`` with ``sigma`` or ``queries`` (calibrates sigma).
        records: records N the scope protects now.
        members: content ids of those records (their tombstoned loss is carried in, see ``Ledger.admit``).
        orders: RDP order grid (None = ``accountant.DEFAULT_ORDERS``).
        alpha: the fixed filter order alpha* (None = optimal for the most queries of the mechanism).
    """

    name: str
    epsilon: float
    delta: float
    mechanism: Mechanism | None = None
    sigma: float | None = None
    queries: int | None = None
    k: int | None = None
    q: float | None = None
    records: int | None = None
    members: Sequence[int] | None = None
    orders: Sequence[float] | None = _DEFAULT
    alpha: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeStatus:
    """Budget state of one scope (fixed-order Renyi filter over dp-accounting RDP, add/remove-one).

    Attributes:
        scope: scope name (one per index shard).
        epsilon_budget: total epsilon allowed at ``delta``.
        delta: target delta of the scope.
        epsilon_spent: the filter's guarantee: epsilon at ``delta`` of ``rdp_spent`` at the single order
            ``filter_order`` (Feldman & Zrnic 2021); 0.0 when nothing was spent or carried.
        optimal_order: the order of ``epsilon_spent`` (= ``filter_order``; None while nothing is spent).
        queries_charged: queries of the scope's own mechanism committed so far.
        queries_remaining: exact number of further queries of its mechanism the filter admits.
        k, q, sigma: the scope's fixed mechanism; ``noise_multiplier`` = sigma * k / 2.
        records: records N of the scope when known (delta < 1/N was enforced at creation).
        orders: number of RDP orders tracked.
        dp_accounting_version: dp-accounting version recorded at creation.
        created: creation time (Unix seconds).
        filter_order: alpha*, the scope's fixed filter order.
        rdp_spent: running RDP at alpha* (carried-over loss + every event charged).
        rdp_budget: B*, the RDP at alpha* whose epsilon at ``delta`` is ``epsilon_budget`` (for display).
        rdp_carried: W(alpha*), the worst tombstoned loss among the records admitted into the scope.
        events_charged: events charged that are not queries of the scope's mechanism (e.g. training runs).
    """

    scope: str
    epsilon_budget: float
    delta: float
    epsilon_spent: float
    optimal_order: float | None
    queries_charged: int
    queries_remaining: int
    k: int
    q: float
    sigma: float
    noise_multiplier: float
    records: int | None
    orders: int
    dp_accounting_version: str
    created: float
    filter_order: float
    rdp_spent: float
    rdp_budget: float
    rdp_carried: float
    events_charged: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (all fields)."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptLine:
    """What one scope looks like right after a committed charge."""

    scope: str
    count: int
    epsilon_spent: float
    optimal_order: float | None
    queries_charged: int
    epsilon_budget: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Proof that a charge was committed (fsynced) before any output is released.

    Attributes:
        group_id: id shared by the charge-log rows of this (possibly multi-scope) charge.
        time: commit time (Unix seconds).
        caller, purpose: free-text labels recorded with the charge.
        lines: one :class:`ReceiptLine` per scope charged.
        statuses: each scope's :class:`ScopeStatus` right after the charge, computed inside the charge's
            transaction (callers never need to read status again after charging).
    """

    group_id: str
    time: float
    caller: str | None
    purpose: str | None
    lines: tuple[ReceiptLine, ...]
    statuses: tuple[ScopeStatus, ...] = ()

    @property
    def scopes(self) -> tuple[str, ...]:
        """Scopes charged, in the order given."""
        return tuple(line.scope for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "group_id": self.group_id,
            "time": self.time,
            "caller": self.caller,
            "purpose": self.purpose,
            "lines": [line.to_dict() for line in self.lines],
            "statuses": [status.to_dict() for status in self.statuses],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """One row of the append-only charge log.

    Attributes:
        id: row id (increasing).
        group_id: rows of one multi-scope charge share it.
        time: commit time (Unix seconds).
        scope: scope charged.
        event: the dp-accounting event as JSON of ``to_named_tuple()``.
        count: identical queries charged by this row.
        caller, purpose: free-text labels.
    """

    id: int
    group_id: str
    time: float
    scope: str
    event: str
    count: int
    caller: str | None
    purpose: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form, with the event decoded to an object."""
        out = asdict(self)
        out["event"] = json.loads(self.event)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeCheck:
    """Result of recomputing one scope's spend from its charge log."""

    scope: str
    ok: bool
    queries_logged: int
    queries_recorded: int
    max_relative_difference: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """Result of :meth:`accountant.Ledger.verify`: integrity check plus per-scope recomputation."""

    path: str
    ok: bool
    integrity: str
    schema_version: int
    scopes: tuple[ScopeCheck, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "path": self.path,
            "ok": self.ok,
            "integrity": self.integrity,
            "schema_version": self.schema_version,
            "scopes": {check.scope: check.to_dict() for check in self.scopes},
        }
