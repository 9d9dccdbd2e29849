"""Errors of the HTTP service. Each carries its HTTP status and a stable ``type`` (the JSON error contract).

The messages are written here, never passed through from the mechanism, so an error body holds nothing about
private records (no ids, scores, neighbours or noise): only the caller's own request, key and budget counts.
"""

from __future__ import annotations

from pipeline.errors import PipelineError, PipelineInputError, PrivacyRefusal

__all__ = [
    "ApiError",
    "BudgetExhausted",
    "BudgetNotConfigured",
    "CompartmentsDamagedError",
    "CompartmentsUnavailable",
    "InvalidRequest",
    "KeyRevoked",
    "KeyStoreInputError",
    "KeyStoreUnavailable",
    "PayloadTooLarge",
    "QuotaExhausted",
    "ServiceUnavailable",
    "ShardForbidden",
    "Unauthorized",
]


class ApiError(PipelineError):
    """An error answered to an HTTP caller: ``{"error": {"type": kind, "message": ...}}`` with ``status``."""

    status: int = 500
    kind: str = "internal_error"
    exit_code = 3


class Unauthorized(ApiError):
    """401: no ``Authorization: Bearer`` header, or a token that matches no key."""

    status, kind = 401, "unauthorized"


class KeyRevoked(ApiError):
    """401: the key was revoked (takes effect on the next request)."""

    status, kind = 401, "key_revoked"


class ShardForbidden(ApiError):
    """403: a requested shard is outside the key's access set (unknown shards look the same)."""

    status, kind = 403, "shard_forbidden"


class QuotaExhausted(ApiError):
    """429: the key's own quota is used up (the shard budgets may still have room for other keys)."""

    status, kind = 429, "quota_exhausted"


class BudgetExhausted(ApiError):
    """409: a shard's global privacy budget (over every key together) does not admit this query."""

    status, kind = 409, "budget_exhausted"


class BudgetNotConfigured(ApiError):
    """409: a targeted shard has no budget scope in the ledger (or the scopes' mechanisms differ); nothing charged."""

    status, kind = 409, "budget_not_configured"


class CompartmentsUnavailable(ApiError):
    """409: ``compose`` was asked but the index has no compartments, or none for a targeted shard."""

    status, kind = 409, "compartments_unavailable"


class CompartmentsDamagedError(ApiError):
    """503: the compartments store fails its checks (manifest, an adapter, the classifier); nothing charged."""

    status, kind = 503, "compartments_damaged"


class ServiceUnavailable(ApiError):
    """503: the ledger cannot be used right now (locked too long, damaged); nothing was released."""

    status, kind = 503, "ledger_unavailable"


class PayloadTooLarge(ApiError):
    """413: the request body is larger than the server's limit."""

    status, kind = 413, "payload_too_large"


class InvalidRequest(ApiError, ValueError):
    """422: bad parameters or an undecodable / oversized image."""

    status, kind, exit_code = 422, "invalid_request", 2


class KeyStoreUnavailable(PrivacyRefusal):
    """The key store is missing, damaged or locked too long; every request is refused (fail closed)."""

    exit_code = 3


class KeyStoreInputError(PipelineInputError):
    """``dprdm keys``: a bad name, an existing name, an unknown key."""
