"""The noise sampler of every DP retrieval release: OpenDP's Gaussian measurement on float vectors.

Why OpenDP: a textbook float Gaussian (Box-Muller or numpy's ziggurat on doubles) leaks through the gaps and
non-uniform spacing of floating-point outputs (Mironov 2012, "On significance of the least significant bits for
differential privacy", CCS 2012). OpenDP's ``make_gaussian`` samples the Gaussian *exactly* (a discrete Gaussian
sampled on an arbitrarily fine grid, Canonne-Kamath-Steinke 2020, with a CSPRNG) and rounds the noisy result to
the nearest float; its privacy map states the zCDP loss rho for an L2 sensitivity d_in with that rounding
already accounted for (OpenDP proof document of ``make_gaussian``, "Proof Definition" of the vector Gaussian
mechanism in ``rust/src/measurements/noise/distribution/gaussian/``, and of ``make_noise`` over float domains).

"Account with exactly what it states": the ledger's noise multiplier of a query is
``z = min(sigma * k / 2, 1 / sqrt(2 * rho))`` with ``rho = gaussian_measurement(sigma).map(2 / k)``; for a
Gaussian, rho-zCDP is RDP(alpha) = rho * alpha = alpha / (2 z^2), so z is the multiplier OpenDP's own statement
implies (never larger than the textbook sigma / sensitivity).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

__all__ = ["gaussian_measurement", "opendp_noise_multiplier"]


@lru_cache(maxsize=1)
def _opendp() -> tuple[Any, Any, Any]:
    """OpenDP's ``domains``, ``metrics`` and ``measurements`` modules, with the ``contrib`` feature enabled.

    Imported lazily (opendp loads a native library) and from the modules themselves rather than ``opendp.prelude``:
    the prelude also imports ``opendp.extras`` (scikit-learn, pandas, polars), about 3 s of start-up for names this
    module does not use. ``opendp.prelude``'s ``dp.m``, ``dp.vector_domain``, ... are these same functions.
    """
    from opendp import domains, measurements, metrics
    from opendp.mod import enable_features

    enable_features("contrib")  # make_gaussian is a contrib constructor (proof-reviewed, see module doc)
    return domains, metrics, measurements


@lru_cache(maxsize=64)
def gaussian_measurement(sigma: float) -> Any:
    """OpenDP's Gaussian measurement on float vectors with noise scale ``sigma`` (cached per sigma).

    ``dp.m.make_gaussian(vector_domain(atom_domain(T=float, nan=False)), l2_distance(T=float), scale=sigma)``:
    input = a float vector without NaN, L2 input metric, output measure zero-concentrated divergence (rho-zCDP).
    Calling it on a vector returns the vector plus exact Gaussian noise rounded to float.

    Args:
        sigma: noise scale (> 0).

    Returns:
        The ``opendp`` Measurement.
    """
    domains, metrics, measurements = _opendp()
    return measurements.make_gaussian(
        domains.vector_domain(domains.atom_domain(T=float, nan=False)), metrics.l2_distance(T=float),
        scale=float(sigma),
    )


@lru_cache(maxsize=1024)
def opendp_noise_multiplier(sigma: float, k: int) -> float:
    """Noise multiplier implied by OpenDP's map at L2 sensitivity 2/k: ``min(sigma*k/2, 1/sqrt(2*rho))``."""
    rho = float(gaussian_measurement(sigma).map(2.0 / k))
    textbook = sigma * k / 2.0
    if not rho > 0.0:
        return textbook
    return min(textbook, 1.0 / math.sqrt(2.0 * rho))
