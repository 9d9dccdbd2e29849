"""Frozen result records of the ledger: scope status, charge receipts, charge-log rows and verification reports.

Each record has a ``to_dict()`` used by the CLI's ``--json``. None of them holds anything derived from private
records: only budget parameters, counts and epsilon spent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Charge", "Receipt", "ReceiptLine", "ScopeCheck", "ScopeStatus", "VerifyReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeStatus:
    """Budget state of one scope (dp-accounting RDP, add/remove-one, sensitivity 2/k).

    Attributes:
        scope: scope name (one per index shard).
        epsilon_budget: total epsilon allowed at ``delta``.
        delta: target delta of the scope.
        epsilon_spent: epsilon at ``delta`` after ``queries_charged`` queries (0.0 for none).
        optimal_order: RDP order attaining ``epsilon_spent`` (None before the first query).
        queries_charged: queries committed so far.
        queries_remaining: exact number of further queries that fit (the next one beyond would exceed).
        k, q, sigma: the scope's fixed mechanism; ``noise_multiplier`` = sigma * k / 2.
        records: records N of the scope when known (delta < 1/N was enforced at creation).
        orders: number of RDP orders tracked.
        dp_accounting_version: dp-accounting version recorded at creation.
        created: creation time (Unix seconds).
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
    """

    group_id: str
    time: float
    caller: str | None
    purpose: str | None
    lines: tuple[ReceiptLine, ...]

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
