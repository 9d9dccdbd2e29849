"""Reading one scope's row of the ledger into a checked, typed value (shared by charging, status and audit).

A scope's running RDP vector is ``(carried + extra) + queries * c``: ``carried`` = W, the elementwise maximum of
the tombstoned loss its members brought (admissions), ``extra`` = the sum, in log order, of its events that are
not a query of its own mechanism (e.g. a training run), and c = RDP vector of one query of its mechanism. The
order of these float operations is fixed, so charges, status and verify compute bit-identical values. A row that
does not parse, or whose stored vector disagrees with that expression, is treated as tampering.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from accountant.budget import (
    check_delta,
    check_epsilon,
    filter_epsilon,
    filter_rdp_budget,
    remaining_queries,
    scaled,
)
from accountant.errors import AccountantInputError, LedgerUnavailable
from accountant.events import ADJACENCY, Mechanism, event_rdp, event_to_json
from accountant.records import ScopeStatus

RTOL = 1e-9  # stored vs recomputed RDP (summation order changes the last bits, notes/accounting.md §1.4)

SCOPE_SQL = (
    "SELECT s.name, s.epsilon, s.delta, s.k, s.q, s.sigma, s.orders, s.records, s.dp_accounting_version, "
    "s.created, s.adjacency, p.queries, p.rdp, s.filter_order, p.events, p.carried, p.extra "
    "FROM scopes s LEFT JOIN spend p ON p.scope = s.name"
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
    filter_order: float
    order_index: int
    events: int
    carried: np.ndarray
    extra: np.ndarray

    @property
    def base(self) -> np.ndarray:
        """RDP spent besides the scope's own queries: carried (W) + extra (other events)."""
        return self.carried + self.extra

    def total(self, queries: int | None = None) -> np.ndarray:
        """Running RDP vector with ``queries`` own queries (default: those charged)."""
        n = self.queries if queries is None else queries
        return self.base + scaled(n, self.per_query)


def tampered(path: str | Path, scope: str, what: str) -> LedgerUnavailable:
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
    (
        name,
        eps,
        delta,
        k,
        q,
        sigma,
        orders,
        records,
        version,
        created,
        adjacency,
        queries,
        rdp_blob,
        order,
        events,
        carried_blob,
        extra_blob,
    ) = row
    try:
        if rdp_blob is None or queries is None or carried_blob is None or extra_blob is None:
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
        if stored.shape != (len(orders_t),) or int(queries) < 0 or int(events) < 0:
            raise ValueError("running RDP vector has the wrong shape")
        if not isinstance(carried_blob, bytes) or not isinstance(extra_blob, bytes):
            raise ValueError("carried/extra RDP vectors are not float64 blobs")
        carried, extra = vector_from_blob(carried_blob), vector_from_blob(extra_blob)
        if carried.shape != stored.shape or extra.shape != stored.shape:
            raise ValueError("carried/extra RDP vectors have the wrong shape")
        if order is None or float(order) not in orders_t:
            raise ValueError(f"filter order {order} is not one of the scope's orders")
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
        filter_order=float(order),
        order_index=orders_t.index(float(order)),
        events=int(events),
        carried=carried,
        extra=extra,
    )


def check_running(path: str | Path, scope: ScopeRow) -> None:
    """Refuse if the stored running RDP vector is not ``carried + extra + queries * c`` (tampering or damage)."""
    expected = scope.total()
    if not np.allclose(scope.rdp, expected, rtol=RTOL, atol=0.0, equal_nan=False):
        raise tampered(path, scope.name, f"running RDP vector does not match {scope.queries} charged queries")


def on_grid(vector: np.ndarray, from_orders: tuple[float, ...], to_orders: tuple[float, ...]) -> np.ndarray:
    """Upper bound of an RDP vector at other orders: the value at the smallest order >= each target (inf if none).

    Valid because Renyi divergence is non-decreasing in its order (van Erven & Harremoes 2014, Thm 3), so a
    bound at a larger order bounds every smaller one. On the same grid it is the identity.
    """
    if from_orders == to_orders:
        return np.asarray(vector, dtype=np.float64).copy()
    source = np.asarray(from_orders, dtype=np.float64)
    order = np.argsort(source)
    source, values = source[order], np.asarray(vector, dtype=np.float64)[order]
    at = np.searchsorted(source, np.asarray(to_orders, dtype=np.float64), side="left")
    padded = np.append(values, np.inf)
    return padded[at]


def status_of(s: ScopeRow) -> ScopeStatus:
    """Status of a parsed scope: the filter's epsilon at alpha* and the exact queries it still admits."""
    i, alpha = s.order_index, s.filter_order
    spent = float(s.total()[i])
    left = remaining_queries(
        s.per_query[i : i + 1],
        s.queries,
        epsilon_budget=s.epsilon,
        delta=s.delta,
        orders=(alpha,),
        base=s.base[i : i + 1],
    )
    return ScopeStatus(
        scope=s.name,
        epsilon_budget=s.epsilon,
        delta=s.delta,
        epsilon_spent=filter_epsilon(spent, order=alpha, delta=s.delta),
        optimal_order=alpha if spent != 0.0 else None,
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
        filter_order=alpha,
        rdp_spent=spent,
        rdp_budget=filter_rdp_budget(s.epsilon, order=alpha, delta=s.delta),
        rdp_carried=float(s.carried[i]),
        events_charged=s.events,
    )
