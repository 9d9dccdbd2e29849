"""OpenDP's Gaussian measurement is the noise sampler; the ledger accounts with exactly what its map states."""

from __future__ import annotations

import math

import pytest

from accountant import Mechanism, gaussian_measurement


@pytest.mark.parametrize("sigma,k", [(0.2, 18), (1.0, 1), (0.05, 64), (3.0, 2), (1e5, 20)])
def test_map_agrees_with_the_textbook_zcdp_and_z_never_exceeds_sigma_k_over_2(sigma, k):
    rho = gaussian_measurement(sigma).map(2.0 / k)
    textbook = (2.0 / k / sigma) ** 2 / 2.0
    assert rho == pytest.approx(textbook, rel=1e-12) and rho >= textbook  # rounding only ever adds loss
    z = Mechanism(k=k, q=0.5, sigma=sigma).noise_multiplier
    assert z <= sigma * k / 2.0
    assert z == pytest.approx(min(sigma * k / 2.0, 1.0 / math.sqrt(2.0 * rho)), rel=0, abs=0)


def test_measurement_is_cached_and_releases_a_float_vector():
    measurement = gaussian_measurement(0.5)
    assert gaussian_measurement(0.5) is measurement
    out = measurement([0.0, 1.0, -1.0])
    assert len(out) == 3 and all(isinstance(x, float) and math.isfinite(x) for x in out)
