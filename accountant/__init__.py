"""dprdm accountant: RDP accounting of DP retrieval queries and training runs, and a persistent ledger that
charges before release with a fixed-order Renyi filter per scope (Feldman & Zrnic 2021; Haney et al. 2023).

Mechanism: Poisson-subsampled (q) Gaussian (std sigma) over the mean of k unit-norm embeddings; L2 sensitivity
2/k under add/remove-one adjacency; noise from OpenDP's exact Gaussian (``gaussian_measurement``), noise
multiplier the one its privacy map states (<= sigma * k / 2); accountant: dp-accounting RDP.
"""

from accountant._inputs import check_scope
from accountant.budget import (
    calibrate_noise_multiplier,
    calibrate_sigma,
    epsilon_for,
    max_queries,
    recommended_delta,
    remaining_queries,
    within_budget,
)
from accountant.errors import (
    AccountantError,
    AccountantInputError,
    BudgetExceeded,
    DeltaRefused,
    LedgerUnavailable,
)
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
from accountant.noise import gaussian_measurement
from accountant.records import (
    Charge,
    ChargeRequest,
    Receipt,
    ReceiptLine,
    ScopeCheck,
    ScopeSpec,
    ScopeStatus,
    VerifyReport,
)

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
    "ChargeRequest",
    "DeltaRefused",
    "Ledger",
    "LedgerUnavailable",
    "Mechanism",
    "Receipt",
    "ReceiptLine",
    "ScopeCheck",
    "ScopeSpec",
    "ScopeStatus",
    "VerifyReport",
    "calibrate_noise_multiplier",
    "calibrate_sigma",
    "check_scope",
    "epsilon_for",
    "event_rdp",
    "gaussian_measurement",
    "max_queries",
    "recommended_delta",
    "remaining_queries",
    "within_budget",
]
