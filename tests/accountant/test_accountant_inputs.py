"""Extreme inputs and failed creations: every finite parameter gives a number or a one-line input error, an
unknown '~user' is an input error, and a ledger file is removed only when this call created it and used nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from accountant_testlib import DELTA, MECH, N, budget_for
from hypothesis import given, settings
from hypothesis import strategies as st

from accountant import (
    MAX_NOISE_MULTIPLIER,
    AccountantInputError,
    Ledger,
    LedgerUnavailable,
    Mechanism,
    check_scope,
    epsilon_for,
    max_queries,
)

positive_finite = st.floats(min_value=0.0, max_value=math.inf, exclude_min=True, allow_infinity=False)


def _epsilon_or_input_error(k, q, sigma) -> float | None:
    """Epsilon after 10 queries, or None after checking the refusal is a one-line AccountantInputError."""
    try:
        eps = epsilon_for(Mechanism(k=k, q=q, sigma=sigma), queries=10, delta=DELTA)
    except AccountantInputError as err:
        assert "\n" not in str(err) and str(err)
        return None
    assert isinstance(eps, float) and not math.isnan(eps) and eps >= 0.0
    return eps


@settings(max_examples=40, deadline=None)
@given(sigma=positive_finite, k=st.integers(1, 64), q=st.sampled_from([1.0, 0.5, 0.01, 1e-9]))
def test_any_finite_positive_sigma_gives_a_number_or_a_one_line_input_error(sigma, k, q):
    _epsilon_or_input_error(k, q, sigma)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 10**30), q=positive_finite.filter(lambda v: v <= 1.0), sigma=positive_finite)
def test_any_k_and_q_give_a_number_or_a_one_line_input_error(k, q, sigma):
    _epsilon_or_input_error(k, q, sigma)


@pytest.mark.parametrize(
    ("k", "q", "sigma", "message"),
    [
        (1, 0.5, 6.4e155, "noise multiplier"),  # used to raise OverflowError inside dp-accounting
        (1, 0.5, 1.7e308, "noise multiplier"),
        (4, 0.5, 2 * MAX_NOISE_MULTIPLIER / 4 * (1 + 1e-9), r"above 1e\+06"),
        (10**7, 0.5, 1.0, "k must be at most"),
        (10**400, 0.5, 1.0, "k must be at most"),
        (1, 10**400, 1.0, "q must be finite"),
    ],
)
def test_absurd_parameters_are_one_line_input_errors(k, q, sigma, message):
    with pytest.raises(AccountantInputError, match=message) as info:
        Mechanism(k=k, q=q, sigma=sigma)
    assert "\n" not in str(info.value)


def test_largest_noise_multiplier_is_accounted():
    mech = Mechanism(k=2, q=0.5, sigma=MAX_NOISE_MULTIPLIER)
    # OpenDP states z = 1/sqrt(2 rho) a few ulps below the textbook sigma*k/2 (rounding accounted for)
    assert mech.noise_multiplier == pytest.approx(MAX_NOISE_MULTIPLIER, rel=1e-12)
    assert mech.noise_multiplier <= MAX_NOISE_MULTIPLIER
    assert epsilon_for(mech, queries=1000, delta=DELTA) < 0.05  # the conversion's floor
    assert max_queries(mech, epsilon=1.0, delta=DELTA) > 10**9


def test_tiny_sigma_costs_infinite_epsilon_not_a_crash():
    eps = _epsilon_or_input_error(1, 1.0, 1e-300)
    assert eps is None or eps == math.inf
    with pytest.raises(AccountantInputError, match="already costs epsilon"):
        check_scope("s", epsilon=10.0, delta=DELTA, mechanism=Mechanism(k=1, q=1.0, sigma=1e-300))


def test_unknown_home_directory_is_an_input_error():
    for path in ("~nosuchuser/ledger.sqlite", Path("~nosuchuser/ledger.sqlite")):
        for create in (True, False):
            with pytest.raises(AccountantInputError, match="home directory") as info:
                Ledger(path, create=create)
            assert "\n" not in str(info.value)


def test_check_scope_refuses_before_anything_is_written(tmp_path):
    cases = [
        ({"epsilon": 0.0}, "epsilon must be finite and > 0"),
        ({"delta": 1e-3, "records": 1000}, "must be below 1/N"),
        ({"epsilon": 1e-6}, "already costs epsilon"),
        ({"orders": [0.5]}, "orders must be"),
    ]
    for overrides, message in cases:
        kwargs = {"epsilon": 1.0, "delta": DELTA, "mechanism": MECH, **overrides}
        with pytest.raises(AccountantInputError, match=message):
            check_scope("s", **kwargs)
    orders, vector = check_scope("s", epsilon=1.0, delta=DELTA, mechanism=MECH, records=1000)
    assert len(orders) == len(vector) and (vector > 0).all()
    assert list(tmp_path.iterdir()) == []


def test_discard_removes_only_a_ledger_this_call_created_and_used_for_nothing(tmp_path):
    new = tmp_path / "new.sqlite"
    book = Ledger(new)
    assert book.created
    book.create_scope("s", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    assert book.discard() and list(tmp_path.iterdir()) == []

    existing = tmp_path / "existing.sqlite"
    with Ledger(existing) as first:
        first.create_scope("s", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    again = Ledger(existing)
    assert not again.created
    assert again.discard() is False and existing.exists()
    with Ledger(existing, create=False) as check:
        assert check.scopes() == ["s"]

    charged = tmp_path / "charged.sqlite"
    book = Ledger(charged)
    book.create_scope("s", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    book.charge("s")
    assert book.discard() is False and charged.exists()  # a spent budget is never thrown away

    shared = tmp_path / "shared.sqlite"
    book = Ledger(shared)
    with Ledger(shared) as other:  # another user of the new file created a scope of its own
        other.create_scope("theirs", epsilon=budget_for(5), delta=DELTA, mechanism=MECH, records=N)
    assert book.discard() is False and shared.exists()


def test_creation_failing_midway_removes_the_new_file_but_nothing_that_existed(tmp_path):
    path = tmp_path / "budget.sqlite"
    (tmp_path / "budget.sqlite-wal").mkdir()  # SQLite cannot create its WAL file: creation fails midway
    with pytest.raises(LedgerUnavailable) as info:
        Ledger(path)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.sqlite-wal"]
    assert (tmp_path / "budget.sqlite-wal").is_dir()
