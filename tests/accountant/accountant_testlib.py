"""Shared helpers of the accountant tests (a uniquely named module, importable from every test file here)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from accountant import Mechanism, epsilon_for

DELTA = 1e-7
#: The DP-RDM regression mechanism (k=18, q=0.01, sigma=0.2 -> z=1.8); its per-query RDP vector is cached.
MECH = Mechanism(k=18, q=0.01, sigma=0.2)


def budget_for(queries: int, mechanism: Mechanism = MECH, delta: float = DELTA) -> float:
    """The epsilon after exactly ``queries`` queries: as a budget it admits exactly that many (strict policy)."""
    return epsilon_for(mechanism, queries=queries, delta=delta)


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent autocommit connection (for tampering and lock contention)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=5)
