"""Input checks of the ledger's public methods (scope names, labels, mechanism arguments); one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from accountant._rows import orders_from_json
from accountant.budget import calibrate_sigma, check_delta, check_epsilon, epsilon_and_order, within_budget
from accountant.errors import AccountantInputError
from accountant.events import DEFAULT_ORDERS, Mechanism, event_rdp

_MAX_LABEL = 500


def check_label(name: str, value: str | None) -> str | None:
    """Validate a caller/purpose label (printable, bounded)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_LABEL or not value.isprintable():
        raise AccountantInputError(
            f"{name} must be printable text of at most {_MAX_LABEL} characters; found {value!r:.60}; shorten it"
        )
    return value


def check_scope_name(name: str) -> str:
    """Validate a scope name (1-200 printable characters)."""
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
        raise AccountantInputError(
            f"scope name must be 1-200 printable characters; found {name!r:.60}; use the shard name, e.g. 'default'"
        )
    return name


def resolve_mechanism(
    mechanism: Mechanism | None,
    *,
    sigma: float | None,
    queries: int | None,
    k: int | None,
    q: float | None,
    epsilon: float,
    delta: float,
    orders: tuple[float, ...],
) -> Mechanism:
    """The scope's mechanism: ``mechanism`` itself, or (k, q, sigma), or (k, q) with sigma calibrated for T queries."""
    if mechanism is not None:
        if any(v is not None for v in (sigma, queries, k, q)):
            raise AccountantInputError(
                "pass either mechanism= or k/q with sigma/queries, not both; drop one of them"
            )
        if not isinstance(mechanism, Mechanism):
            raise AccountantInputError(f"mechanism must be an accountant.Mechanism; found {type(mechanism)}")
        return mechanism
    if k is None or q is None:
        raise AccountantInputError("k and q are required without mechanism=; pass e.g. --k 16 --q 0.01")
    if (sigma is None) == (queries is None):
        raise AccountantInputError(
            "pass exactly one of sigma or queries (to calibrate sigma); found both/none"
        )
    if sigma is None:
        sigma = calibrate_sigma(k=k, q=q, queries=queries, epsilon=epsilon, delta=delta, orders=tuple(orders))
    return Mechanism(k=k, q=q, sigma=sigma)


def _orders(orders: Sequence[float]) -> tuple[float, ...]:
    try:
        return orders_from_json(json.dumps([float(a) for a in orders]))
    except (TypeError, ValueError, OverflowError) as err:
        raise AccountantInputError(
            f"orders must be a non-empty sequence of finite RDP orders > 1; found {orders!r:.60} ({err}); "
            "omit orders to use the default grid"
        ) from None


def check_scope(
    name: str,
    *,
    epsilon: float,
    delta: float,
    mechanism: Mechanism,
    records: int | None = None,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[tuple[float, ...], np.ndarray]:
    """Check everything a new scope needs before any file is touched; return (orders, per-query RDP vector).

    The scope name, epsilon, delta (below 1/N when ``records`` N is given), the mechanism type, the order grid,
    and that at least one query of ``mechanism`` fits the (epsilon, delta) budget (strict policy).

    Raises:
        AccountantInputError: the first problem found, as one line.
    """
    name = check_scope_name(name)
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta, records=records, scope=name)
    if not isinstance(mechanism, Mechanism):
        raise AccountantInputError(f"mechanism must be an accountant.Mechanism; found {type(mechanism)}")
    orders_t = _orders(orders)
    per_query = event_rdp(mechanism.dp_event(), orders_t)
    first, _ = epsilon_and_order(per_query, 1, delta=delta, orders=orders_t)
    if not within_budget(first, epsilon):
        raise AccountantInputError(
            f"scope '{name}': one query with k={mechanism.k}, q={mechanism.q}, sigma={mechanism.sigma:g} already "
            f"costs epsilon={first:.6g} > budget {epsilon:g} at delta={delta:g}; raise --sigma or --epsilon, "
            "or lower --q"
        )
    return orders_t, per_query
