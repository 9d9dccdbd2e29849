"""Errors raised by ``accountant``. One base class; every class carries the CLI exit code it maps to.

Exit code 3 always means: nothing was charged and nothing may be released.
"""

from __future__ import annotations


class AccountantError(Exception):
    """Base class of every error raised by the ``accountant`` package."""

    exit_code: int = 2


class AccountantInputError(AccountantError, ValueError):
    """A bad parameter (k, q, sigma, epsilon, delta, scope name, path)."""

    exit_code = 2


class BudgetExceeded(AccountantError):
    """The charge would take a scope past its (epsilon, delta) budget; nothing was recorded."""

    exit_code = 3


class LedgerUnavailable(AccountantError):
    """The ledger is missing, corrupt, tampered with or locked; every charge is refused (fail closed)."""

    exit_code = 3


class DeltaRefused(AccountantError):
    """delta is not below 1/N for the scope's current record count N (or N is unknown); nothing was charged."""

    exit_code = 3
