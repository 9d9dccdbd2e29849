"""Constants shared by the service tests (importable by name, unlike conftest)."""

from __future__ import annotations

from accountant import Mechanism

MECH = Mechanism(k=3, q=0.5, sigma=0.4)
DELTA = 1e-4
