"""Known answers: closed forms and library/published vectors from notes/accounting.md §2 and the DP-RDM paper.

Tolerances: rtol=1e-9 for closed forms at integer orders, 1e-8 for library values quoted to 10 digits, 1e-6 for
values quoted to 7 digits.
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from accountant_testlib import MECH
from dp_accounting import rdp

from accountant import (
    DEFAULT_ORDERS,
    AccountantInputError,
    LedgerUnavailable,
    Mechanism,
    calibrate_sigma,
    epsilon_for,
    event_rdp,
    max_queries,
)
from accountant.budget import epsilon_and_order
from accountant.events import event_from_json, event_to_json

DPRDM_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 64)])


def gaussian(z: float) -> Mechanism:
    """q = 1 and k = 2 make sigma equal to the noise multiplier z (sensitivity 2/k = 1)."""
    return Mechanism(k=2, q=1.0, sigma=z)


def subsampled(q: float, z: float) -> Mechanism:
    return Mechanism(k=2, q=q, sigma=z)


def test_mechanism_noise_multiplier_and_event():
    assert MECH.noise_multiplier == pytest.approx(1.8, rel=1e-15)
    assert MECH.sensitivity == pytest.approx(2 / 18, rel=1e-15)
    # z is what OpenDP's map states (a few ulps at most below sigma*k/2 = 1.8)
    assert MECH.dp_event() == dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(MECH.noise_multiplier))
    assert MECH.noise_multiplier <= 1.8
    plain = gaussian(3.0).dp_event()
    assert isinstance(plain, dpa.GaussianDpEvent) and plain.noise_multiplier == pytest.approx(3.0, rel=1e-15)
    assert MECH.to_dict()["noise_multiplier"] == MECH.noise_multiplier


@pytest.mark.parametrize("z", [0.5, 1.0, 4.0], ids=["z0.5", "z1", "z4"])
def test_gaussian_rdp_closed_form(z):
    orders = (1.5, 2.0, 2.71828, 32.0)
    got = event_rdp(gaussian(z).dp_event(), orders)
    np.testing.assert_allclose(got, np.array(orders) / (2 * z * z), rtol=1e-9)


SUBSAMPLED = [
    (0.01, 1.0, 1.718134220745e-04, 2.646375745847e-04),
    (0.01, 4.0, 6.449425094199e-06, 9.680448562326e-06),
    (0.04, 1.5, 8.949969668737e-04, 1.376872392170e-03),
    (0.1, 2.0, 2.836228266264e-03, 4.373658348577e-03),
    (0.5, 1.0, 3.573740195088e-01, 6.968891185980e-01),
]


@pytest.mark.parametrize("q,z,rdp2,rdp3", SUBSAMPLED, ids=[f"q{r[0]}-z{r[1]}" for r in SUBSAMPLED])
def test_subsampled_rdp_closed_form_orders_2_and_3(q, z, rdp2, rdp3):
    e = math.exp(1 / z**2)
    closed2 = math.log1p(q * q * (e - 1))
    closed3 = 0.5 * math.log((1 - q) ** 3 + 3 * (1 - q) ** 2 * q + 3 * (1 - q) * q * q * e + q**3 * e**3)
    got = event_rdp(subsampled(q, z).dp_event(), (2.0, 3.0))
    np.testing.assert_allclose(got, [closed2, closed3], rtol=1e-9)
    np.testing.assert_allclose(got, [rdp2, rdp3], rtol=1e-9)


LIBRARY = [  # (mechanism, T, delta, epsilon, optimal order, rtol)
    ("G2", gaussian(1.0), 1, 1e-5, 4.728507067, 5.4, 1e-9),
    ("G6a", gaussian(2.0), 1, 1e-5, 2.165715659, 9.6, 1e-9),
    ("G6b", gaussian(5.0), 1, 1e-5, 0.794522033, 22.0, 1e-9),
    ("G3", gaussian(10.0), 100, 1e-5, 4.728507067, 5.4, 1e-9),
    ("S2", subsampled(0.0025, 1.3), 6000, 1e-5, 0.7242234026109595, 19.0, 1e-9),
    ("S3", subsampled(1e-3, 1.0), 30000, 1e-7, 1.4154988495444842, 13.0, 1e-9),
    ("S9", subsampled(0.01, 0.7), 120, 1e-5, 3.2392676, None, 1e-7),
    ("DP-RDM", MECH, 1000, 1e-7, 0.99688, 25.0, 1e-5),
]


@pytest.mark.parametrize("name,mech,queries,delta,eps,order,rtol", LIBRARY, ids=[r[0] for r in LIBRARY])
def test_library_vectors(name, mech, queries, delta, eps, order, rtol):
    got, got_order = epsilon_and_order(event_rdp(mech.dp_event()), queries, delta=delta)
    assert got == pytest.approx(eps, rel=rtol)
    assert epsilon_for(mech, queries=queries, delta=delta) == got
    if order is not None:
        assert got_order == order


def test_dprdm_regression_vector_on_both_grids():
    """k=18, q=0.01, sigma=0.2, T=1000, delta=1e-7: 0.99688 at order 25 on the DP-RDM grid and the pinned default."""
    pinned = epsilon_for(MECH, queries=1000, delta=1e-7)
    assert pinned == pytest.approx(0.9968787608646192, rel=1e-12)
    paper = epsilon_and_order(event_rdp(MECH.dp_event(), DPRDM_ORDERS), 1000, delta=1e-7, orders=DPRDM_ORDERS)
    assert paper[0] == pytest.approx(0.99688, abs=5e-6)
    assert paper[1] == 25.0
    assert tuple(float(a) for a in rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS) == DEFAULT_ORDERS
    assert len(DEFAULT_ORDERS) == 156


@pytest.mark.parametrize("queries", [1, 7, 1000], ids=["T1", "T7", "T1000"])
def test_count_times_vector_equals_library_compose_with_count(queries):
    """The ledger's n * c is what RdpAccountant.compose(event, count=n) computes."""
    acc = rdp.RdpAccountant(list(DEFAULT_ORDERS), dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(MECH.dp_event(), queries)
    np.testing.assert_allclose(queries * event_rdp(MECH.dp_event()), acc.rdp, rtol=1e-12)
    assert epsilon_for(MECH, queries=queries, delta=1e-7) == pytest.approx(acc.get_epsilon(1e-7), rel=1e-12)


def test_zero_queries_spend_nothing():
    assert epsilon_for(MECH, queries=0, delta=1e-7) == 0.0


def test_remaining_queries_brute_force_vector():
    """q=0.01, z=1, delta=1e-6, epsilon=2: exactly 531 queries fit; the 532nd gives 2.00056 (notes §7.10)."""
    mech = subsampled(0.01, 1.0)
    assert max_queries(mech, epsilon=2.0, delta=1e-6) == 531
    assert epsilon_for(mech, queries=531, delta=1e-6) <= 2.0
    assert epsilon_for(mech, queries=532, delta=1e-6) == pytest.approx(2.00056, abs=1e-5)


def test_calibration_vectors():
    """RDP-calibrated noise multipliers from notes §3 (dp-accounting RDP column); sigma = z when k = 2."""
    assert calibrate_sigma(k=2, q=1.0, queries=1, epsilon=1.0, delta=1e-6) == pytest.approx(
        4.530878, rel=1e-6
    )
    assert calibrate_sigma(k=2, q=0.04, queries=2250, epsilon=8.0, delta=1e-5) == pytest.approx(
        1.415873, rel=1e-5
    )
    sigma = calibrate_sigma(k=20, q=0.01, queries=10_000, epsilon=10.0, delta=1e-6)
    assert sigma == pytest.approx(0.0865746, rel=1e-5)
    assert epsilon_for(Mechanism(k=20, q=0.01, sigma=sigma), queries=10_000, delta=1e-6) <= 10.0


def test_event_json_round_trip_and_refuses_foreign_classes():
    for mech in (MECH, gaussian(2.0)):
        assert event_from_json(event_to_json(mech.dp_event())) == mech.dp_event()
    evil = '{"module_name":"os","class_name":"system","command":"true"}'
    with pytest.raises(LedgerUnavailable, match="unreadable event"):
        event_from_json(evil)
    with pytest.raises(LedgerUnavailable, match="unreadable event"):
        event_from_json('{"module_name":"dp_accounting.dp_event","class_name":"NonPrivateDpEvent"}')


BAD_MECHANISMS = [
    ({"k": 0, "q": 0.1, "sigma": 1.0}, "k must be an integer >= 1"),
    ({"k": 2.5, "q": 0.1, "sigma": 1.0}, "k must be an integer"),
    ({"k": True, "q": 0.1, "sigma": 1.0}, "k must be an integer"),
    ({"k": 4, "q": 0.0, "sigma": 1.0}, r"q must be in \(0, 1\]"),
    ({"k": 4, "q": 1.5, "sigma": 1.0}, r"q must be in \(0, 1\]"),
    ({"k": 4, "q": float("nan"), "sigma": 1.0}, "q must be finite"),
    ({"k": 4, "q": 0.1, "sigma": 0.0}, "sigma must be > 0"),
    ({"k": 4, "q": 0.1, "sigma": float("inf")}, "sigma must be finite"),
    ({"k": 4, "q": 0.1, "sigma": "1"}, "sigma must be a number"),
]


@pytest.mark.parametrize("kwargs,message", BAD_MECHANISMS, ids=[m for _, m in BAD_MECHANISMS])
def test_mechanism_refuses_bad_parameters(kwargs, message):
    with pytest.raises(AccountantInputError, match=message):
        Mechanism(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"queries": 0}, "queries must be an integer >= 1"),
        ({"epsilon": 0.0}, "epsilon must be finite and > 0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"q": 2.0}, r"q must be in \(0, 1\]"),
    ],
    ids=["queries", "epsilon", "delta", "q"],
)
def test_calibrate_refuses_bad_parameters(kwargs, message):
    params = {"k": 4, "q": 0.1, "queries": 10, "epsilon": 1.0, "delta": 1e-6} | kwargs
    with pytest.raises(AccountantInputError, match=message):
        calibrate_sigma(**params)
