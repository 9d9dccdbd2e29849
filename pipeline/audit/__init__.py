"""Privacy audit of the DP retrieval mechanism: canary membership inference → empirical ε lower bound."""

from pipeline.audit.run import AuditReport, run_audit, synthetic_embeddings
from pipeline.audit.stats import (
    best_threshold,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound,
)

__all__ = [
    "AuditReport",
    "run_audit",
    "synthetic_embeddings",
    "best_threshold",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
]
