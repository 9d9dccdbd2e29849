"""Pure budget maths over dp-accounting RDP vectors: epsilon after n queries, remaining queries, calibration.

Every function here is I/O free, so the ledger and the planner (``dprdm budget plan``) share one code path:
epsilon after n identical queries is ``rdp.compute_epsilon(orders, n * c, delta)`` with ``c`` the cached RDP
vector of one query (dp-accounting RDP accountant, add/remove-one adjacency; RDP composes additively, and
``RdpAccountant.compose(event, count=n)`` computes exactly ``n * c``).

Boundary policy (strict): a spend is allowed iff ``epsilon_after <= epsilon_budget`` in float arithmetic, with no
slack; NaN is refused. Because the ledger always evaluates ``n * c`` (never a running float sum), a budget equal to
``epsilon_for(mech, queries=m, delta=delta)`` admits exactly m queries and refuses the (m+1)-th.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

import dp_accounting as dpa
import numpy as np
from dp_accounting import rdp

from accountant.errors import AccountantInputError
from accountant.events import (
    ADJACENCY,
    DEFAULT_ORDERS,
    MAX_NOISE_MULTIPLIER,
    Mechanism,
    accounting_maths,
    event_rdp,
)

__all__ = [
    "calibrate_sigma",
    "check_delta",
    "check_epsilon",
    "epsilon_and_order",
    "epsilon_for",
    "max_queries",
    "remaining_queries",
    "within_budget",
]

_UNLIMITED = 2**53  # counts beyond this are not representable exactly; treat as "no practical limit"


def check_epsilon(epsilon: float, *, name: str = "epsilon") -> float:
    """Validate a target or budget epsilon (finite, > 0)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise AccountantInputError(f"{name} must be a number; found {epsilon!r}; pass e.g. --epsilon 8")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise AccountantInputError(f"{name} must be finite and > 0; found {epsilon}; pass e.g. --epsilon 8")
    return epsilon


def check_delta(delta: float, *, records: int | None = None, scope: str | None = None) -> float:
    """Validate delta: in (0, 1), and below 1/N when the scope's record count N is given."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise AccountantInputError(f"delta must be a number; found {delta!r}; pass e.g. --delta 1e-6")
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise AccountantInputError(
            f"delta must be in (0, 1); found {delta}; pass e.g. --delta 1e-6 (below 1/N)"
        )
    if records is not None:
        if isinstance(records, bool) or not isinstance(records, (int, np.integer)) or records < 1:
            raise AccountantInputError(f"records must be an integer >= 1; found {records!r}")
        if delta >= 1.0 / records:
            where = f" for scope '{scope}'" if scope is not None else ""
            raise AccountantInputError(
                f"delta={delta:g} must be below 1/N = {1.0 / records:.3g}{where} with N={records} records; "
                f"pass a smaller --delta, e.g. {10.0 ** math.floor(math.log10(0.1 / records)):g}"
            )
    return delta


def _check_count(queries: int, *, minimum: int) -> int:
    if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or queries < minimum:
        raise AccountantInputError(
            f"queries must be an integer >= {minimum}; found {queries!r}; pass e.g. 1000"
        )
    return int(queries)


def within_budget(epsilon: float, epsilon_budget: float) -> bool:
    """The boundary policy: strict ``epsilon <= epsilon_budget``; NaN is never within budget."""
    return bool(epsilon <= epsilon_budget)


def epsilon_and_order(
    vector: np.ndarray, count: int, *, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> tuple[float, float | None]:
    """(epsilon, optimal order) after ``count`` queries of RDP vector ``vector``; (0.0, None) for no queries."""
    if count == 0:
        return 0.0, None
    with accounting_maths(f"{count} queries"):
        eps, order = rdp.compute_epsilon(orders, count * vector, delta)
    return float(eps), (None if order is None else float(order))


def epsilon_for(
    mechanism: Mechanism, *, queries: int, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> float:
    """Epsilon at ``delta`` after ``queries`` queries of ``mechanism`` (dp-accounting RDP, add/remove-one).

    Mechanism: Poisson-subsampled (q) Gaussian over the mean of k unit vectors, L2 sensitivity 2/k.

    Raises:
        AccountantInputError: queries < 0 or delta not in (0, 1).
    """
    queries = _check_count(queries, minimum=0)
    delta = check_delta(delta)
    return epsilon_and_order(event_rdp(mechanism.dp_event(), orders), queries, delta=delta, orders=orders)[0]


def remaining_queries(
    vector: np.ndarray,
    charged: int,
    *,
    epsilon_budget: float,
    delta: float,
    orders: tuple[float, ...] = DEFAULT_ORDERS,
) -> int:
    """Exact number m of further queries that fit: ``charged + m`` is within budget, ``charged + m + 1`` is not.

    Epsilon is non-decreasing in the count (RDP vectors are non-negative). A closed-form per-order guess is
    confirmed with ``compute_epsilon`` at guess +- 2 (falling back to an exponential then binary search), always
    with the ledger's strict policy, so the answer is exact. Returns ``2**53`` when even that many would fit.
    """

    def fits(extra: int) -> bool:
        eps, _ = epsilon_and_order(vector, charged + extra, delta=delta, orders=orders)
        return within_budget(eps, epsilon_budget)

    if not fits(0) or not fits(1):
        return 0
    guess = _linear_guess(vector, charged, epsilon_budget=epsilon_budget, delta=delta, orders=orders)
    if guess is not None:
        low, high = max(guess - 2, 1), guess + 2
        if fits(low) and not fits(high):
            return _bisect(fits, low, high)
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
        if high > _UNLIMITED:
            return _UNLIMITED
    return _bisect(fits, low, high)


def _bisect(fits, low: int, high: int) -> int:
    """Largest m in [low, high) with fits(m), given fits(low) and not fits(high)."""
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _linear_guess(
    vector: np.ndarray, charged: int, *, epsilon_budget: float, delta: float, orders: tuple[float, ...]
) -> int | None:
    """Closed-form estimate of the remaining count: at each order a > 1.01, dp-accounting's conversion
    eps_a(n) = n * c_a + log1p(-1/a) - log(delta * a) / (a - 1) is linear in n, and eps = min over orders;
    the exact answer is then confirmed (or found by search) with the real ``compute_epsilon``."""
    a = np.asarray(orders, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        offset = np.log1p(-1.0 / a) - np.log(delta * a) / (a - 1.0)
        total = np.floor((epsilon_budget - offset) / vector)
    usable = (a > 1.01) & np.isfinite(total) & (vector > 0)
    if not usable.any():
        return None
    best = float(total[usable].max()) - charged
    return int(best) if 1 <= best < _UNLIMITED else None


def max_queries(
    mechanism: Mechanism, *, epsilon: float, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> int:
    """How many queries of ``mechanism`` fit in a fresh (epsilon, delta) budget (strict policy)."""
    return remaining_queries(
        event_rdp(mechanism.dp_event(), orders),
        0,
        epsilon_budget=check_epsilon(epsilon),
        delta=check_delta(delta),
        orders=orders,
    )


def _ceil_significant(value: float, digits: int = 7) -> float:
    exact = Decimal(repr(value))
    step = Decimal(1).scaleb(exact.adjusted() - (digits - 1))
    return float(exact.quantize(step, rounding=ROUND_CEILING))


def calibrate_sigma(
    *,
    k: int,
    q: float,
    queries: int,
    epsilon: float,
    delta: float,
    orders: tuple[float, ...] = DEFAULT_ORDERS,
) -> float:
    """Smallest noise std sigma (to 7 significant digits, rounded up) such that ``queries`` queries fit.

    Solves for the noise multiplier with ``dp_accounting.calibrate_dp_mechanism`` (Brent, RDP accountant,
    add/remove-one) on ``SelfComposedDpEvent(event, queries)``, converts z to sigma = 2 z / k (sensitivity 2/k),
    rounds up, then post-checks with :func:`epsilon_for` (the ledger's own code path) and steps sigma up until
    ``epsilon_for(Mechanism(k, q, sigma), queries) <= epsilon``. The result never overshoots the target.

    Raises:
        AccountantInputError: a parameter is out of range, or no sigma reaches the target.
    """
    Mechanism(k=k, q=q, sigma=1.0)  # validates k and q
    queries = _check_count(queries, minimum=1)
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)

    def make_event(noise_multiplier: float) -> dpa.DpEvent:
        gaussian = dpa.GaussianDpEvent(noise_multiplier)
        single = gaussian if q == 1.0 else dpa.PoissonSampledDpEvent(q, gaussian)
        return dpa.SelfComposedDpEvent(single, queries)

    try:
        with accounting_maths(f"sigma calibration for {queries} queries"):
            z = dpa.calibrate_dp_mechanism(
                lambda: dpa.rdp.RdpAccountant(list(orders), ADJACENCY),
                make_event,
                epsilon,
                delta,
                bracket_interval=dpa.LowerEndpointAndGuess(0.0, 1.0),
                tol=1e-9,
            )
    except (ValueError, dpa.NoBracketIntervalFoundError) as err:
        if isinstance(err, AccountantInputError):
            raise
        raise AccountantInputError(
            f"cannot calibrate sigma for epsilon={epsilon}, delta={delta}, {queries} queries, k={k}, q={q} "
            f"({err}); raise --epsilon or lower --queries"
        ) from err
    if z is None or not math.isfinite(z) or z <= 0:
        raise AccountantInputError(
            f"cannot calibrate sigma for epsilon={epsilon}, delta={delta}, {queries} queries; "
            "raise --epsilon or lower --queries"
        )
    if z > MAX_NOISE_MULTIPLIER:
        raise AccountantInputError(
            f"{queries} queries within epsilon={epsilon:g} need a noise multiplier of {z:.3g}, above the "
            f"accountable {MAX_NOISE_MULTIPLIER:g}; raise --epsilon or lower --queries"
        )
    sigma = _ceil_significant(2.0 * z / int(k))
    for _ in range(1000):
        if within_budget(
            epsilon_for(Mechanism(k=k, q=q, sigma=sigma), queries=queries, delta=delta), epsilon
        ):
            return sigma
        sigma = _ceil_significant(sigma * (1.0 + 1e-6))
    raise AccountantInputError(  # pragma: no cover - Brent's result is within 1e-9 of the root
        f"sigma calibration did not converge for epsilon={epsilon}, {queries} queries; pass --sigma explicitly"
    )
