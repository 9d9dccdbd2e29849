"""Shared helpers of the accountant tests (a uniquely named module, importable from every test file here)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dp_accounting import rdp

from accountant import DEFAULT_ORDERS, Mechanism, epsilon_for, event_rdp

DELTA = 1e-7
#: Records N of every test scope (delta < 1/N is checked at every charge).
N = 1000
#: The DP-RDM regression mechanism (k=18, q=0.01, sigma=0.2 -> z=1.8); its per-query RDP vector is cached.
MECH = Mechanism(k=18, q=0.01, sigma=0.2)


def budget_for(queries: int, mechanism: Mechanism = MECH, delta: float = DELTA) -> float:
    """The epsilon after exactly ``queries`` queries: as a budget it admits exactly that many (strict policy)."""
    return epsilon_for(mechanism, queries=queries, delta=delta)


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent autocommit connection (for tampering and lock contention)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=5)


def filter_epsilon_for(
    queries: int, order: float, mechanism: Mechanism = MECH, delta: float = DELTA
) -> float:
    """The fixed-order filter's epsilon after ``queries`` queries at ``order`` (an independent recomputation)."""
    vector = event_rdp(mechanism.dp_event())
    return float(rdp.compute_epsilon([order], [queries * vector[DEFAULT_ORDERS.index(order)]], delta)[0])
