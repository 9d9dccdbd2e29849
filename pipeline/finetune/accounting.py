"""The DP event of a fine-tuning run, its epsilon, noise calibration, and the one ledger charge.

Mechanism (DP-SGD, Abadi et al. 2016, as Opacus implements it): each of ``steps`` steps Poisson-samples every
training record with probability q, clips each sampled record's gradient to L2 norm C, sums, and adds
N(0, (z·C)² I). Under add/remove-one adjacency the sum has L2 sensitivity C, so one step is
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` and the run is
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), steps)``: declared in full before the first
step and charged once. Accountant: dp-accounting RDP at the ledger's order grid (``accountant.DEFAULT_ORDERS``).

The charge goes through :func:`charge_training` / :func:`training_fits`, the only two places that call the
ledger's multi-event API (``Ledger.fits`` / ``Ledger.charge(event=..., records=...)``, the phase-1 contract).
A ledger without that API cannot hold a training event: it is refused before anything is charged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import dp_accounting as dpa
from dp_accounting import rdp

from accountant.events import ADJACENCY, DEFAULT_ORDERS
from pipeline.errors import PipelineInputError, PrivacyRefusal

if TYPE_CHECKING:
    from accountant import Ledger, Receipt

__all__ = [
    "MAX_TRAINING_NOISE_MULTIPLIER",
    "calibrate_training_noise",
    "charge_training",
    "event_to_dict",
    "training_epsilon",
    "training_event",
    "training_fits",
]

#: Calibration refuses noise multipliers above this: a training that needs more noise than this to fit its
#: epsilon learns nothing (the noise is 1000x the clipped signal of every record).
MAX_TRAINING_NOISE_MULTIPLIER = 1000.0


def training_event(*, sample_rate: float, noise_multiplier: float, steps: int) -> dpa.DpEvent:
    """``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)``: the whole DP-SGD run as one dp-accounting event.

    Raises:
        PipelineInputError: q outside (0, 1], z <= 0 or not finite, steps < 1.
    """
    if not (isinstance(sample_rate, float | int) and 0.0 < float(sample_rate) <= 1.0):
        raise PipelineInputError(f"sample rate must be in (0, 1]; found {sample_rate!r}; lower --batch-size")
    if not (isinstance(noise_multiplier, float | int) and math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PipelineInputError(
            f"noise multiplier must be a finite number > 0; found {noise_multiplier!r}; pass e.g. --sigma 1.0"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PipelineInputError(f"steps must be an integer >= 1; found {steps!r}; pass e.g. --epochs 1")
    step = dpa.GaussianDpEvent(float(noise_multiplier))
    if float(sample_rate) < 1.0:
        step = dpa.PoissonSampledDpEvent(float(sample_rate), step)
    return dpa.SelfComposedDpEvent(step, int(steps))


def training_epsilon(event: dpa.DpEvent, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS) -> float:
    """Epsilon of ``event`` alone at ``delta`` (dp-accounting RDP, add/remove-one, best of ``orders``)."""
    accountant = rdp.RdpAccountant(list(orders), ADJACENCY)
    return float(accountant.compose(event).get_epsilon(delta))


def calibrate_training_noise(*, sample_rate: float, steps: int, epsilon: float, delta: float) -> float:
    """The smallest noise multiplier z whose training event has epsilon <= ``epsilon`` at ``delta``.

    Uses ``accountant.budget.calibrate_noise_multiplier`` when the accountant provides it (phase-1 contract),
    else dp-accounting's ``calibrate_dp_mechanism`` on the same RDP accountant; either way the result is
    re-checked and never over the target.

    Raises:
        PipelineInputError: epsilon/delta out of range.
        PrivacyRefusal: the target needs z > ``MAX_TRAINING_NOISE_MULTIPLIER`` (train fewer steps, raise epsilon).
    """
    if not (isinstance(epsilon, float | int) and math.isfinite(epsilon) and epsilon > 0):
        raise PipelineInputError(f"epsilon must be a finite number > 0; found {epsilon!r}; pass e.g. --epsilon 3")
    if not (isinstance(delta, float | int) and 0.0 < delta < 1.0):
        raise PipelineInputError(f"delta must be in (0, 1); found {delta!r}")

    def eps_at(z: float) -> float:
        return training_epsilon(training_event(sample_rate=sample_rate, noise_multiplier=z, steps=steps), delta)

    if eps_at(MAX_TRAINING_NOISE_MULTIPLIER) > epsilon:
        raise PrivacyRefusal(
            f"a training of {steps} steps at sample rate {sample_rate:.4g} cannot reach epsilon={epsilon:g} at "
            f"delta={delta:g} with noise multiplier <= {MAX_TRAINING_NOISE_MULTIPLIER:g}; nothing was charged; "
            "lower --epochs or --batch-size, or raise --epsilon"
        )
    z = None
    try:
        from accountant.budget import calibrate_noise_multiplier  # the accountant's own (phase-1 contract)
    except ImportError:
        calibrate_noise_multiplier = None
    if calibrate_noise_multiplier is not None:
        z = float(calibrate_noise_multiplier(q=sample_rate, steps=steps, epsilon=epsilon, delta=delta))
    else:
        z = float(dpa.calibrate_dp_mechanism(
            lambda: rdp.RdpAccountant(list(DEFAULT_ORDERS), ADJACENCY),
            lambda value: training_event(sample_rate=sample_rate, noise_multiplier=value, steps=steps),
            epsilon, delta,
            dpa.ExplicitBracketInterval(1e-3, MAX_TRAINING_NOISE_MULTIPLIER),
            tol=1e-6,
        ))
    while eps_at(z) > epsilon:  # never over the target, whatever the search tolerance did
        z *= 1.0 + 1e-6
    return z


def event_to_dict(event: dpa.DpEvent) -> dict[str, Any]:
    """The event as field-named JSON of ``to_named_tuple()`` (the ledger's stored form)."""

    def convert(value: Any) -> Any:
        if hasattr(value, "_fields"):
            return {field: convert(getattr(value, field)) for field in value._fields}
        return value

    return convert(event.to_named_tuple())


def _require_event_ledger(ledger: Ledger) -> None:
    if not hasattr(ledger, "fits"):
        raise PrivacyRefusal(
            f"ledger {getattr(ledger, 'path', ledger)} cannot hold a training event (it predates multi-event "
            "scopes); nothing was charged or trained; upgrade dprdm"
        )


def training_fits(ledger: Ledger, scope: str, event: dpa.DpEvent, *, records: int) -> bool:
    """Dry run: would ``event`` fit the scope's remaining budget under the ledger's filter? (No write.)

    Raises:
        PrivacyRefusal: the ledger cannot hold training events.
    """
    _require_event_ledger(ledger)
    return bool(ledger.fits(scope, event=event, records={scope: records}))


def charge_training(
    ledger: Ledger, scope: str, event: dpa.DpEvent, *, records: int, caller: str | None = None,
    purpose: str | None = None,
) -> Receipt:
    """Charge the whole training run to ``scope`` in ONE ledger transaction (before the first gradient step).

    Raises:
        PrivacyRefusal: the ledger cannot hold training events.
        accountant.BudgetExceeded: the event does not fit (nothing recorded).
        accountant.LedgerUnavailable: the ledger is unreadable or tampered (nothing recorded).
    """
    _require_event_ledger(ledger)
    return ledger.charge(scope, event=event, records={scope: records}, caller=caller, purpose=purpose)
