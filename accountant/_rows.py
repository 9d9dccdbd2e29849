"""Reading one scope's row of the ledger into a checked, typed value (shared by charging, status and audit).

A scope row that does not parse into valid parameters, or whose running RDP vector disagrees with
``queries * c`` (c = RDP vector of one query of the scope's mechanism), is treated as tampering.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from accountant.budget import check_delta, check_epsilon
from accountant.errors import AccountantInputError, LedgerUnavailable
from accountant.events import ADJACENCY, Mechanism, event_rdp, event_to_json

RTOL = 1e-9  # stored vs recomputed RDP (summation order changes the last bits, notes/accounting.md §1.4)

SCOPE_SQL = (
    "SELECT s.name, s.epsilon, s.delta, s.k, s.q, s.sigma, s.orders, s.records, s.dp_accounting_version, "
    "s.created, s.adjacency, p.queries, p.rdp FROM scopes s LEFT JOIN spend p ON p.scope = s.name"
)


class ScopeRow(NamedTuple):
    """A parsed scope with its running state and the cached per-query RDP vector and event JSON."""

    name: str
    epsilon: float
    delta: float
    mechanism: Mechanism
    orders: tuple[float, ...]
    records: int | None
    version: str
    created: float
    queries: int
    rdp: np.ndarray
    per_query: np.ndarray
    event_json: str


def tampered(path: Path, scope: str, what: str) -> LedgerUnavailable:
    """The one-line refusal for an inconsistent scope."""
    return LedgerUnavailable(
        f"ledger {path} scope '{scope}' is inconsistent ({what}); the ledger is damaged or tampered with, "
        "so every charge is refused; restore it from a backup (never reset a budget)"
    )


def vector_to_blob(vector: np.ndarray) -> bytes:
    """Running RDP vectors are stored as little-endian float64 bytes (exact, and ~100x cheaper than JSON)."""
    return np.ascontiguousarray(vector, dtype="<f8").tobytes()


def vector_from_blob(blob: bytes) -> np.ndarray:
    """Inverse of :func:`vector_to_blob` (raises ValueError on a length that is not a multiple of 8)."""
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


@lru_cache(maxsize=64)
def orders_from_json(text: str) -> tuple[float, ...]:
    """Parse a stored order grid (non-empty, finite, every order > 1)."""
    orders = tuple(float(a) for a in json.loads(text))
    if not orders or not all(math.isfinite(a) and a > 1.0 for a in orders):
        raise ValueError("orders must be finite and > 1")
    return orders


@lru_cache(maxsize=256)
def per_query(mechanism: Mechanism, orders: tuple[float, ...]) -> tuple[np.ndarray, str]:
    """Cached (RDP vector of one query, event JSON) of a scope's mechanism."""
    event = mechanism.dp_event()
    return event_rdp(event, orders), event_to_json(event)


def parse_row(row: tuple) -> ScopeRow:
    """Parse a ``SCOPE_SQL`` row; raises ValueError naming what is unreadable."""
    name, eps, delta, k, q, sigma, orders, records, version, created, adjacency, queries, rdp_blob = row
    try:
        if rdp_blob is None or queries is None:
            raise ValueError("no spend row")
        if adjacency != ADJACENCY.name:
            raise ValueError(f"adjacency {adjacency}")
        orders_t = orders_from_json(orders)
        mech = Mechanism(k=k, q=q, sigma=sigma)
        check_epsilon(eps)
        check_delta(delta)
        if not isinstance(rdp_blob, bytes):
            raise ValueError("running RDP vector is not a float64 blob")
        stored = vector_from_blob(rdp_blob)
        if stored.shape != (len(orders_t),) or int(queries) < 0:
            raise ValueError("running RDP vector has the wrong shape")
    except (TypeError, AccountantInputError) as err:
        raise ValueError(str(err)) from err
    vector, event_json = per_query(mech, orders_t)
    return ScopeRow(
        name=name,
        epsilon=float(eps),
        delta=float(delta),
        mechanism=mech,
        orders=orders_t,
        records=records,
        version=version,
        created=float(created),
        queries=int(queries),
        rdp=stored,
        per_query=vector,
        event_json=event_json,
    )


def check_running(path: Path, scope: ScopeRow) -> None:
    """Refuse if the stored running RDP vector is not ``queries * c`` (tampering or damage)."""
    expected = scope.queries * scope.per_query if scope.queries else np.zeros_like(scope.per_query)
    if not np.allclose(scope.rdp, expected, rtol=RTOL, atol=0.0, equal_nan=False):
        raise tampered(path, scope.name, f"running RDP vector does not match {scope.queries} charged queries")
