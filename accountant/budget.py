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
from dp_accounting.mechanism_calibration import NoBracketIntervalFoundError

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
    "calibrate_noise_multiplier",
    "calibrate_sigma",
    "check_delta",
    "check_epsilon",
    "epsilon_and_order",
    "epsilon_for",
    "filter_epsilon",
    "filter_order",
    "filter_rdp_budget",
    "max_queries",
    "recommended_delta",
    "scaled",
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


def scaled(count: int, vector: np.ndarray) -> np.ndarray:
    """``count * vector`` with 0 * inf = 0 (dp-accounting marks orders it cannot bound as inf RDP)."""
    return count * vector if count else np.zeros_like(vector)


def epsilon_and_order(
    vector: np.ndarray,
    count: int,
    *,
    delta: float,
    orders: tuple[float, ...] = DEFAULT_ORDERS,
    base: np.ndarray | None = None,
) -> tuple[float, float | None]:
    """(epsilon, optimal order) of RDP ``base + count * vector``; (0.0, None) when nothing was spent.

    ``base`` (default none) is the part of a scope's running RDP that is not its own queries (carried-over loss
    and other events). NaN anywhere gives epsilon NaN, which the strict policy refuses (dp-accounting's
    ``compute_epsilon`` would otherwise return 0 for a NaN order, because ``max(0, nan)`` is 0).
    """
    total = scaled(count, vector) if base is None else base + scaled(count, vector)
    if count == 0 and (base is None or not np.any(base)):
        return 0.0, None
    if np.isnan(total).any():
        return math.nan, None
    with accounting_maths(f"{count} queries"):
        eps, order = rdp.compute_epsilon(orders, total, delta)
    return float(eps), (None if order is None else float(order))


def filter_epsilon(rdp_value: float, *, order: float, delta: float) -> float:
    """The fixed-order Renyi filter's guarantee: epsilon at ``delta`` of RDP ``rdp_value`` at ONE order.

    ``compute_epsilon([order], [rdp_value], delta)`` (Balle et al. 2020 Thm 21 conversion, as dp-accounting).
    By Feldman & Zrnic 2021 (arXiv 2008.11193, Thm 3.1, the Renyi filter) an interaction that halts before the
    sum of the events' RDP at a fixed order alpha exceeds B is (alpha, B)-RDP even when every event is chosen
    adaptively; so this epsilon is a valid (epsilon, delta) guarantee of a filter whose running sum is
    ``rdp_value``. NaN or negative sums give NaN (refused).
    """
    rdp_value = float(rdp_value)
    if not rdp_value >= 0.0:
        return math.nan
    if rdp_value == 0.0:
        return 0.0
    with accounting_maths("the filter sum"):
        eps, _ = rdp.compute_epsilon([order], [rdp_value], delta)
    return float(eps)


def filter_rdp_budget(epsilon: float, *, order: float, delta: float) -> float:
    """B*: the RDP at ``order`` whose converted epsilon equals ``epsilon`` (for display; admission uses epsilon).

    dp-accounting's conversion at one order is ``r + log1p(-1/a) - log(delta*a)/(a-1)``, linear in r.
    """
    a = float(order)
    if a <= 1.01:
        return 0.0
    return max(0.0, float(epsilon - (math.log1p(-1.0 / a) - math.log(delta * a) / (a - 1.0))))


def filter_order(
    vector: np.ndarray, *, epsilon: float, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> float:
    """The scope's fixed filter order alpha*: the optimal order for the most queries of ``vector`` that fit.

    With n = :func:`remaining_queries` (the multi-order count), alpha* = argmin_alpha eps_alpha(n * c). Then the
    fixed-order filter at alpha* admits exactly n queries: eps_{alpha*}(n c) = eps(n) <= budget, and
    eps_{alpha*}((n+1) c) >= min_alpha eps_alpha((n+1) c) > budget. A scope that fits no query gets the
    optimal order of one query.
    """
    n = remaining_queries(vector, 0, epsilon_budget=epsilon, delta=delta, orders=orders)
    _, order = epsilon_and_order(vector, max(n, 1), delta=delta, orders=orders)
    if order is None:  # pragma: no cover - n >= 1 queries of a positive vector always have an order
        order = max(orders)
    return float(order)


def recommended_delta(records: int) -> float:
    """The delta ``budget plan`` recommends for N records: the largest power of ten <= 1/(10 N).

    delta must stay below 1/N (a mechanism that releases one random record whole is (0, 1/N)-DP); 1/(10 N)
    keeps a margin, rounded down to a power of ten so it reads well.

    Raises:
        AccountantInputError: records is not an integer >= 1.
    """
    if isinstance(records, bool) or not isinstance(records, (int, np.integer)) or records < 1:
        raise AccountantInputError(f"records must be an integer >= 1; found {records!r:.30}")
    exponent = math.floor(math.log10(0.1 / int(records)))
    while 10.0**exponent > 0.1 / int(records):  # guard log10 rounding
        exponent -= 1
    return float(10.0**exponent)


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
    base: np.ndarray | None = None,
) -> int:
    """Exact number m of further queries that fit: ``charged + m`` is within budget, ``charged + m + 1`` is not.

    ``base`` is RDP already spent besides the ``charged`` queries (epsilon of ``base + n * vector``).

    Epsilon is non-decreasing in the count (RDP vectors are non-negative). A closed-form per-order guess is
    confirmed with ``compute_epsilon`` at guess +- 2 (falling back to an exponential then binary search), always
    with the ledger's strict policy, so the answer is exact. Returns ``2**53`` when even that many would fit.
    """

    def fits(extra: int) -> bool:
        eps, _ = epsilon_and_order(vector, charged + extra, delta=delta, orders=orders, base=base)
        return within_budget(eps, epsilon_budget)

    if not fits(0) or not fits(1):
        return 0
    guess = _linear_guess(
        vector, charged, epsilon_budget=epsilon_budget, delta=delta, orders=orders, base=base
    )
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
    vector: np.ndarray,
    charged: int,
    *,
    epsilon_budget: float,
    delta: float,
    orders: tuple[float, ...],
    base: np.ndarray | None = None,
) -> int | None:
    """Closed-form estimate of the remaining count: at each order a > 1.01, dp-accounting's conversion
    eps_a(n) = n * c_a + log1p(-1/a) - log(delta * a) / (a - 1) is linear in n, and eps = min over orders;
    the exact answer is then confirmed (or found by search) with the real ``compute_epsilon``."""
    a = np.asarray(orders, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        offset = np.log1p(-1.0 / a) - np.log(delta * a) / (a - 1.0)
        room = epsilon_budget - offset - (0.0 if base is None else np.asarray(base, dtype=np.float64))
        total = np.floor(room / vector)
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

    z = _calibrate_z(
        _subsampled_gaussian(q, queries),
        epsilon=epsilon,
        delta=delta,
        orders=orders,
        what=f"sigma for {queries} queries, k={k}, q={q}",
        fix="raise --epsilon or lower --queries",
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


def _subsampled_gaussian(q: float, count: int):
    """z -> SelfComposed(PoissonSampled(q, Gaussian(z)), count) (plain Gaussian inside when q == 1)."""

    def make_event(noise_multiplier: float) -> dpa.DpEvent:
        gaussian = dpa.GaussianDpEvent(noise_multiplier)
        single = gaussian if q == 1.0 else dpa.PoissonSampledDpEvent(q, gaussian)
        return dpa.SelfComposedDpEvent(single, count)

    return make_event


def _calibrate_z(
    make_event, *, epsilon: float, delta: float, orders: tuple[float, ...], what: str, fix: str
) -> float:
    """Brent (``dp_accounting.calibrate_dp_mechanism``, RDP accountant, add/remove-one) for the noise multiplier.

    ``NoBracketIntervalFoundError`` lives in ``dp_accounting.mechanism_calibration`` (not at the top level of
    dp_accounting 0.6.0); it, like any ValueError of the search, becomes a one-line input error.
    """
    try:
        with accounting_maths(f"calibration of {what}"):
            z = dpa.calibrate_dp_mechanism(
                lambda: dpa.rdp.RdpAccountant(list(orders), ADJACENCY),
                make_event,
                epsilon,
                delta,
                bracket_interval=dpa.LowerEndpointAndGuess(0.0, 1.0),
                tol=1e-9,
            )
    except (ValueError, NoBracketIntervalFoundError) as err:
        if isinstance(err, AccountantInputError):
            raise
        raise AccountantInputError(
            f"cannot calibrate {what} for epsilon={epsilon:g}, delta={delta:g} "
            f"({' '.join(str(err).split())[:120]}); {fix}"
        ) from err
    if z is None or not math.isfinite(z) or z <= 0:
        raise AccountantInputError(f"cannot calibrate {what} for epsilon={epsilon:g}, delta={delta:g}; {fix}")
    if z > MAX_NOISE_MULTIPLIER:
        raise AccountantInputError(
            f"{what}: epsilon={epsilon:g} would need a noise multiplier of {z:.3g}, above the accountable "
            f"{MAX_NOISE_MULTIPLIER:g}; {fix}"
        )
    return float(z)


def calibrate_noise_multiplier(
    *,
    q: float,
    steps: int,
    epsilon: float,
    delta: float,
    orders: tuple[float, ...] = DEFAULT_ORDERS,
) -> float:
    """Smallest noise multiplier z (7 significant digits, rounded up) for a DP-SGD run to fit (epsilon, delta).

    Event: ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), steps)`` (Poisson sampling
    with rate q, per-sample clipping at C, Gaussian noise z*C: L2 sensitivity C under add/remove-one, Abadi et
    al. 2016), accounted with dp-accounting RDP over ``orders``. Brent's root is rounded up, then post-checked
    with ``compute_epsilon`` and stepped up until within budget, so the result never overshoots.

    Raises:
        AccountantInputError: a parameter is out of range, or no z reaches the target.
    """
    q = float(q)
    if not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise AccountantInputError(f"q must be in (0, 1]; found {q}; pass the sampling rate batch/records")
    steps = _check_count(steps, minimum=1)
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    make_event = _subsampled_gaussian(q, steps)
    what = f"the noise multiplier for {steps} steps at q={q:g}"
    z = _ceil_significant(
        _calibrate_z(
            make_event, epsilon=epsilon, delta=delta, orders=orders, what=what, fix="raise --epsilon"
        )
    )
    for _ in range(1000):
        vector = event_rdp(make_event(z), tuple(orders))
        if within_budget(epsilon_and_order(vector, 1, delta=delta, orders=tuple(orders))[0], epsilon):
            return z
        z = _ceil_significant(z * (1.0 + 1e-6))
    raise AccountantInputError(  # pragma: no cover - Brent's result is within 1e-9 of the root
        f"noise-multiplier calibration did not converge for epsilon={epsilon}; pass --sigma explicitly"
    )
