"""The private-query mechanism and its dp-accounting event, serialisation and per-event RDP vector.

Mechanism: one DP retrieval query releases mean(e_1..e_k) + N(0, sigma^2 I) over k unit-norm neighbour
embeddings, the neighbours drawn from a Poisson subsample of the corpus (each record kept with probability q).
Sensitivity: adding or removing one record changes at most one of the k neighbours, so the L2 sensitivity of the
mean is 2/k (add/remove-one adjacency) and the noise multiplier is z = sigma / (2/k) = sigma * k / 2.
Accountant: dp-accounting ``RdpAccountant`` (ADD_OR_REMOVE_ONE) over ``PoissonSampledDpEvent(q,
GaussianDpEvent(z))``, or plain ``GaussianDpEvent(z)`` when q == 1.

Supported events (any scope may be charged with them, e.g. a DP-SGD training run
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), steps)``): ``GaussianDpEvent``,
``PoissonSampledDpEvent`` of a Gaussian, and ``SelfComposedDpEvent`` of either (see :func:`check_event`).

Compatibility: the stored event JSON is the field-named form of ``DpEvent.to_named_tuple()``; only those three
event classes are accepted back, so a tampered ledger can never make us import an arbitrary module.
"""

from __future__ import annotations

import json
import math
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import dp_accounting as dpa
import numpy as np
from dp_accounting import rdp

from accountant.errors import AccountantInputError, LedgerUnavailable
from accountant.noise import opendp_noise_multiplier

__all__ = [
    "ADJACENCY",
    "DEFAULT_ORDERS",
    "DP_ACCOUNTING_VERSION",
    "MAX_K",
    "MAX_NOISE_MULTIPLIER",
    "Mechanism",
    "accounting_maths",
    "check_event",
    "event_from_json",
    "event_rdp",
    "event_to_json",
]

#: dp-accounting 0.6.0 ``DEFAULT_RDP_ORDERS`` (156 orders: 1.1..10.9, 11..63, 128..1024), pinned explicitly and
#: stored with every scope so that a later library default cannot change a recorded epsilon.
DEFAULT_ORDERS: tuple[float, ...] = tuple(float(a) for a in rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

#: Neighbouring relation of every scope. GaussianDpEvent's noise multiplier is std / L2-sensitivity under this
#: relation (notes/accounting.md §5: never combine it with REPLACE_ONE).
ADJACENCY = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE

DP_ACCOUNTING_VERSION: str = version("dp-accounting")

#: Largest accepted noise multiplier z = sigma * k / 2. Near z = 1e5 the epsilon of any number of queries is
#: already at the floor of the RDP-to-(epsilon, delta) conversion (it no longer depends on z), so larger z add
#: nothing; far larger z overflow inside dp-accounting (z**2 leaves float range near 1e154). Refused as input.
MAX_NOISE_MULTIPLIER = 1e6
#: Largest accepted k (neighbours averaged per query): far beyond any retrieval, and keeps sigma * k finite.
MAX_K = 1_000_000

_EVENT_MODULE = "dp_accounting.dp_event"
_EVENT_CLASSES = {"GaussianDpEvent", "PoissonSampledDpEvent", "SelfComposedDpEvent"}


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise AccountantInputError(
            f"{name} must be a number; found {value!r:.60}; pass a decimal such as 0.5"
        )
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise AccountantInputError(f"{name} must be finite; found {value}; pass a finite positive number")
    return value


@contextmanager
def accounting_maths(what: str) -> Iterator[None]:
    """Run dp-accounting maths for ``what``; float overflow/underflow there becomes a one-line input error.

    This is the one place where the numeric failures of the RDP maths (``OverflowError``, ``ZeroDivisionError``,
    ``FloatingPointError``) are translated; numpy's divide/overflow warnings are silenced (their inf/NaN results
    are refused by the strict budget policy, which never admits NaN or inf).
    """
    try:
        with np.errstate(all="ignore"):
            yield
    except (OverflowError, ZeroDivisionError, FloatingPointError) as err:
        raise AccountantInputError(
            f"RDP accounting of {what} is outside float range ({type(err).__name__}: {err}); the parameters are "
            "too extreme to account; use an ordinary k, q and sigma (noise multiplier sigma*k/2 around 0.1-100)"
        ) from err


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One DP retrieval query: Poisson subsampling with rate q, mean of k unit vectors, Gaussian noise sigma.

    L2 sensitivity 2/k under add/remove-one adjacency, so ``noise_multiplier = sigma * k / 2``; accounted by the
    dp-accounting RDP accountant. ``q == 1`` means no subsampling.

    Args:
        k: number of neighbours averaged (>= 1).
        q: Poisson sampling probability of each record, in (0, 1].
        sigma: per-coordinate standard deviation of the Gaussian noise added to the mean (> 0).

    Raises:
        AccountantInputError: a parameter is out of range (k > ``MAX_K`` or a noise multiplier above
            ``MAX_NOISE_MULTIPLIER`` included: those are beyond what the RDP maths can represent).
    """

    k: int
    q: float
    sigma: float

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise AccountantInputError(f"k must be an integer >= 1; found {self.k!r:.60}; pass e.g. --k 16")
        if self.k > MAX_K:
            raise AccountantInputError(
                f"k must be at most {MAX_K} (neighbours averaged per query); found {str(self.k):.30}; "
                "pass e.g. --k 16"
            )
        q = _check_finite("q", self.q)
        if not 0.0 < q <= 1.0:
            raise AccountantInputError(
                f"q must be in (0, 1]; found {q}; pass a sampling rate such as --q 0.01"
            )
        sigma = _check_finite("sigma", self.sigma)
        if sigma <= 0.0:
            raise AccountantInputError(
                f"sigma must be > 0; found {sigma}; pass a positive noise std such as 0.2"
            )
        if sigma * int(self.k) / 2.0 > MAX_NOISE_MULTIPLIER:
            raise AccountantInputError(
                f"noise multiplier sigma*k/2 = {sigma * int(self.k) / 2.0:.7g} (sigma={sigma:g}, k={int(self.k)}) "
                f"is above {MAX_NOISE_MULTIPLIER:g}: more noise no longer lowers epsilon there and far larger "
                "values overflow the RDP maths; pass a smaller --sigma"
            )
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "sigma", sigma)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the mean of k unit vectors under add/remove-one adjacency: 2/k."""
        return 2.0 / self.k

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier OpenDP's Gaussian measurement states: ``min(sigma*k/2, 1/sqrt(2*rho))``.

        ``rho = gaussian_measurement(sigma).map(2/k)`` is OpenDP's zCDP loss at L2 sensitivity 2/k, rounding of
        the exactly sampled noise included (see :mod:`accountant.noise`); a Gaussian with multiplier z is
        rho = 1/(2 z^2)-zCDP, so the ledger accounts with exactly what the sampler states, never with more
        than the textbook ``sigma * k / 2``.
        """
        return opendp_noise_multiplier(self.sigma, self.k)

    def dp_event(self) -> dpa.DpEvent:
        """The dp-accounting event of one query (Poisson-subsampled Gaussian, or Gaussian when q == 1)."""
        gaussian = dpa.GaussianDpEvent(self.noise_multiplier)
        return gaussian if self.q == 1.0 else dpa.PoissonSampledDpEvent(self.q, gaussian)

    def to_dict(self) -> dict[str, float | int]:
        """Plain-JSON form: k, q, sigma, noise_multiplier, sensitivity."""
        return {
            "k": self.k,
            "q": self.q,
            "sigma": self.sigma,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
        }


def _named_tuple_to_obj(value: Any) -> Any:
    if hasattr(value, "_fields"):
        return {field: _named_tuple_to_obj(getattr(value, field)) for field in value._fields}
    return value


def event_to_json(event: dpa.DpEvent) -> str:
    """Serialise an event as field-named JSON of ``to_named_tuple()`` (stable, human-readable)."""
    return json.dumps(_named_tuple_to_obj(event.to_named_tuple()), separators=(",", ":"))


def _obj_to_named_tuple(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj
    if obj.get("module_name") != _EVENT_MODULE or obj.get("class_name") not in _EVENT_CLASSES:
        raise ValueError(f"unsupported event {obj.get('module_name')}.{obj.get('class_name')}")
    fields = list(obj)
    wrapper = namedtuple("_StoredEvent", fields)  # dp-accounting only reads _fields and attributes
    return wrapper(**{key: _obj_to_named_tuple(val) for key, val in obj.items()})


def _check_gaussian_like(event: Any, *, composed: bool) -> None:
    if isinstance(event, dpa.GaussianDpEvent):
        z = _check_finite("noise_multiplier", event.noise_multiplier)
        if not 0.0 < z <= MAX_NOISE_MULTIPLIER:
            raise AccountantInputError(
                f"GaussianDpEvent noise_multiplier must be in (0, {MAX_NOISE_MULTIPLIER:g}]; found {z}; "
                "pass a positive noise multiplier"
            )
        return
    if isinstance(event, dpa.PoissonSampledDpEvent):
        q = _check_finite("sampling_probability", event.sampling_probability)
        if not 0.0 < q <= 1.0 or not isinstance(event.event, dpa.GaussianDpEvent):
            raise AccountantInputError(
                "PoissonSampledDpEvent must have a sampling_probability in (0, 1] and a GaussianDpEvent inside; "
                f"found q={q}, {type(event.event).__name__}; use PoissonSampledDpEvent(q, GaussianDpEvent(z))"
            )
        _check_gaussian_like(event.event, composed=True)
        return
    if isinstance(event, dpa.SelfComposedDpEvent) and not composed:
        count = event.count
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise AccountantInputError(
                f"SelfComposedDpEvent count must be an integer >= 1; found {count!r:.30}"
            )
        _check_gaussian_like(event.event, composed=True)
        return
    raise AccountantInputError(
        f"unsupported privacy event {type(event).__name__}; the ledger accepts GaussianDpEvent, "
        "PoissonSampledDpEvent(q, GaussianDpEvent(z)) and SelfComposedDpEvent of those"
    )


def check_event(event: Any) -> dpa.DpEvent:
    """Validate a chargeable event: Gaussian, Poisson-sampled Gaussian, or SelfComposed of one of those.

    Raises:
        AccountantInputError: any other event class, nesting or parameter out of range.
    """
    _check_gaussian_like(event, composed=False)
    return event


def event_from_json(text: str) -> dpa.DpEvent:
    """Rebuild a stored event; only the supported events (:func:`check_event`) are accepted.

    Raises:
        LedgerUnavailable: the text is not a supported serialised event (a damaged or tampered ledger).
    """
    try:
        return check_event(dpa.DpEvent.from_named_tuple(_obj_to_named_tuple(json.loads(text))))
    except (ValueError, TypeError, AttributeError) as err:
        raise LedgerUnavailable(
            f"ledger charge log holds an unreadable event ({err}); the ledger is damaged or tampered with, "
            "refusing every charge; restore it from a backup"
        ) from err


@lru_cache(maxsize=256)
def _event_rdp_cached(event: dpa.DpEvent, orders: tuple[float, ...]) -> np.ndarray:
    with accounting_maths("one query"):
        vector = np.asarray(rdp.RdpAccountant(list(orders), ADJACENCY).compose(event).rdp, dtype=np.float64)
    vector.setflags(write=False)
    return vector


def event_rdp(event: dpa.DpEvent, orders: tuple[float, ...] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP vector of ONE occurrence of ``event`` at ``orders`` (dp-accounting RDP, add/remove-one).

    Composing a Poisson-sampled Gaussian costs ~30 ms, so the vector is cached per (event, orders); RDP is
    additive, so n identical queries cost ``n * event_rdp(event)``. Returns a read-only array.
    """
    if not isinstance(orders, tuple):
        orders = tuple(float(a) for a in orders)
    return _event_rdp_cached(event, orders)
