"""Privacy audit of the DP retrieval mechanism: canary membership inference → empirical ε lower bound.

Public: :func:`run_audit` and its :class:`AuditReport`. The statistics (Clopper–Pearson bounds, threshold choice)
live in :mod:`pipeline.audit.stats`, the synthetic default data in :mod:`pipeline.audit.run`.
"""

from pipeline.audit.run import AuditReport, run_audit

__all__ = ["AuditReport", "run_audit"]
