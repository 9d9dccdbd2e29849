"""Input checks of the ledger's public methods (scope names, labels, mechanism arguments); one-line errors."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from accountant._rows import orders_from_json
from accountant.budget import (
    calibrate_sigma,
    check_delta,
    check_epsilon,
    epsilon_and_order,
    filter_epsilon,
    filter_order,
    within_budget,
)
from accountant.errors import AccountantInputError
from accountant.events import DEFAULT_ORDERS, Mechanism, event_rdp
from accountant.records import ScopeSpec

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


def _orders(orders: Sequence[float] | None) -> tuple[float, ...]:
    if orders is None:
        return DEFAULT_ORDERS
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


def check_ids(ids: Any) -> np.ndarray:
    """Content ids as a sorted, unique int64 array (empty allowed)."""
    try:
        array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    except TypeError as err:
        raise AccountantInputError(
            f"ids must be a sequence of int64 content ids; found {type(ids).__name__}"
        ) from err
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (
        array.ndim != 1
        or array.dtype.kind not in "iu"
        or array.dtype == np.uint64
        and array.max() > 2**63 - 1
    ):
        raise AccountantInputError(
            f"ids must be a 1-d sequence of integer content ids; found dtype {array.dtype}, shape {array.shape}"
        )
    return np.unique(array.astype(np.int64))


def check_records_map(records: Mapping[str, int] | None) -> dict[str, int]:
    """The ``records=`` argument of a charge: scope name -> current N (an integer >= 1)."""
    if records is None:
        return {}
    if not isinstance(records, Mapping):
        raise AccountantInputError(
            f"records must map scope names to record counts; found {type(records).__name__}"
        )
    out = {}
    for name, n in records.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise AccountantInputError(f"records['{name}'] must be an integer >= 1; found {n!r:.30}")
        out[str(name)] = int(n)
    return out


class PreparedScope(NamedTuple):
    """A scope spec after every check, ready to insert."""

    name: str
    epsilon: float
    delta: float
    mechanism: Mechanism
    records: int | None
    orders: tuple[float, ...]
    filter_order: float
    members: np.ndarray


def _alpha(alpha: Any, orders: tuple[float, ...]) -> tuple[float, tuple[float, ...]]:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise AccountantInputError(f"alpha must be a number > 1.01; found {alpha!r:.30}; e.g. alpha=8")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 1.01):
        raise AccountantInputError(
            f"alpha must be a finite RDP order > 1.01 (dp-accounting converts no smaller order); found {alpha}"
        )
    if alpha not in orders:
        orders = tuple(sorted((*orders, alpha)))
    return alpha, orders


def prepare_scope(spec: ScopeSpec) -> PreparedScope:
    """Every check a new scope needs, before any write: name, budget, delta < 1/N, mechanism, orders, filter.

    The filter order alpha* is ``spec.alpha`` or the optimal order for the most queries of the scope's
    mechanism that fit (:func:`accountant.budget.filter_order`); one query must fit the filter at alpha*.

    Raises:
        AccountantInputError: the first problem found, as one line.
    """
    if not isinstance(spec, ScopeSpec):
        raise AccountantInputError(f"scope specs must be accountant.ScopeSpec; found {type(spec).__name__}")
    name = check_scope_name(spec.name)
    epsilon = check_epsilon(spec.epsilon)
    delta = check_delta(spec.delta, records=spec.records, scope=name)
    orders = _orders(spec.orders)
    mech = resolve_mechanism(
        spec.mechanism,
        sigma=spec.sigma,
        queries=spec.queries,
        k=spec.k,
        q=spec.q,
        epsilon=epsilon,
        delta=delta,
        orders=orders,
    )
    orders, per_query = check_scope(
        name, epsilon=epsilon, delta=delta, mechanism=mech, records=spec.records, orders=orders
    )
    if spec.alpha is None:
        alpha = filter_order(per_query, epsilon=epsilon, delta=delta, orders=orders)
    else:
        alpha, orders = _alpha(spec.alpha, orders)
        per_query = event_rdp(mech.dp_event(), orders)
        first = filter_epsilon(float(per_query[orders.index(alpha)]), order=alpha, delta=delta)
        if not within_budget(first, epsilon):
            raise AccountantInputError(
                f"scope '{name}': one query costs epsilon={first:.6g} > budget {epsilon:g} at the filter order "
                f"alpha={alpha:g}; omit alpha (the optimal order is chosen) or raise --sigma/--epsilon"
            )
    members = check_ids(spec.members if spec.members is not None else ())
    return PreparedScope(name, epsilon, delta, mech, spec.records, orders, alpha, members)
