"""dprdm accountant: RDP accounting of DP retrieval queries and a persistent ledger that charges before release.

Mechanism: Poisson-subsampled (q) Gaussian (std sigma) over the mean of k unit-norm embeddings; L2 sensitivity
2/k under add/remove-one adjacency, noise multiplier sigma * k / 2; accountant: dp-accounting RDP.
"""

from accountant._inputs import check_scope
from accountant.budget import calibrate_sigma, epsilon_for, max_queries, remaining_queries, within_budget
from accountant.errors import AccountantError, AccountantInputError, BudgetExceeded, LedgerUnavailable
from accountant.events import (
    ADJACENCY,
    DEFAULT_ORDERS,
    DP_ACCOUNTING_VERSION,
    MAX_K,
    MAX_NOISE_MULTIPLIER,
    Mechanism,
    event_rdp,
)
from accountant.ledger import Ledger
from accountant.records import Charge, Receipt, ReceiptLine, ScopeCheck, ScopeStatus, VerifyReport

__all__ = [
    "ADJACENCY",
    "DEFAULT_ORDERS",
    "DP_ACCOUNTING_VERSION",
    "MAX_K",
    "MAX_NOISE_MULTIPLIER",
    "AccountantError",
    "AccountantInputError",
    "BudgetExceeded",
    "Charge",
    "Ledger",
    "LedgerUnavailable",
    "Mechanism",
    "Receipt",
    "ReceiptLine",
    "ScopeCheck",
    "ScopeStatus",
    "VerifyReport",
    "calibrate_sigma",
    "check_scope",
    "epsilon_for",
    "event_rdp",
    "max_queries",
    "remaining_queries",
    "within_budget",
]
