"""The training event: Opacus's RDP epsilon vs dp-accounting's (the ledger's), calibration never over target."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
import torch
from opacus.accountants import RDPAccountant

from pipeline.errors import PipelineInputError, PrivacyRefusal
from pipeline.finetune import DPFineTuner, calibrate_training_noise, training_epsilon, training_event
from pipeline.finetune.accounting import event_to_dict

DELTA = 1e-5
GRID = [(0.5, 0.01, 1000), (1.0, 0.04, 100), (1.1, 0.05, 3), (2.0, 0.02, 5000), (0.8, 0.25, 40), (4.0, 0.1, 200)]


def _opacus_epsilon(z: float, q: float, steps: int, delta: float = DELTA) -> float:
    acc = RDPAccountant()
    acc.history = [(z, q, steps)]
    return float(acc.get_epsilon(delta))


def test_event_shape() -> None:
    event = training_event(sample_rate=0.04, noise_multiplier=1.1, steps=30)
    assert event == dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.04, dpa.GaussianDpEvent(1.1)), 30)
    assert event_to_dict(event)["count"] == 30
    assert training_event(sample_rate=1.0, noise_multiplier=2.0, steps=2).event == dpa.GaussianDpEvent(2.0)


def test_opacus_known_vector() -> None:
    """Opacus's own test vector (tests/accountants_test.py): z=1.5, q=0.04, 2250 steps, delta=1e-5."""
    assert _opacus_epsilon(1.5, 0.04, 2250) == pytest.approx(7.32911117143, rel=1e-9)


@pytest.mark.parametrize(("z", "q", "steps"), GRID, ids=[f"z{z}-q{q}-T{t}" for z, q, t in GRID])
def test_opacus_and_ledger_epsilon_agree_within_2_percent(z: float, q: float, steps: int) -> None:
    ours = training_epsilon(training_event(sample_rate=q, noise_multiplier=z, steps=steps), DELTA)
    theirs = _opacus_epsilon(z, q, steps)
    assert abs(ours - theirs) <= 0.02 * theirs
    assert ours >= theirs * (1 - 0.02)  # the ledger's figure is never the smaller by more than 2 %


def test_trained_run_epsilon_matches_opacus_accountant(decoder) -> None:
    """The Opacus accountant attached to the real run reports the epsilon of the charged event (within 2 %)."""
    n, dim = 200, decoder.embedding_dim
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    tuner = DPFineTuner(decoder, batch_size=10, physical_batch_size=16, steps=3)
    out = tuner.fit(images, emb, noise_multiplier=0.9, condition_sigma=0.2, delta=DELTA, _seed=0)
    ours = training_epsilon(training_event(sample_rate=10 / n, noise_multiplier=0.9, steps=3), DELTA)
    assert out.steps == 3
    assert abs(ours - out.opacus_epsilon) <= 0.02 * out.opacus_epsilon
    assert ours >= out.opacus_epsilon * (1 - 0.02)


@pytest.mark.parametrize(("epsilon", "q", "steps"), [(1.0, 0.04, 50), (3.0, 0.1, 200), (10.0, 0.02, 1000)])
def test_calibration_never_over_target(epsilon: float, q: float, steps: int) -> None:
    z = calibrate_training_noise(sample_rate=q, steps=steps, epsilon=epsilon, delta=DELTA)
    spent = training_epsilon(training_event(sample_rate=q, noise_multiplier=z, steps=steps), DELTA)
    assert spent <= epsilon
    assert spent >= 0.98 * epsilon  # and not wastefully far below it
    looser = training_epsilon(training_event(sample_rate=q, noise_multiplier=z * 0.99, steps=steps), DELTA)
    assert looser > spent


def test_calibration_unreachable_refused() -> None:
    with pytest.raises(PrivacyRefusal, match="cannot reach epsilon"):
        calibrate_training_noise(sample_rate=1.0, steps=10**9, epsilon=1e-6, delta=DELTA)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_rate": 0.0, "noise_multiplier": 1.0, "steps": 1}, "sample rate"),
        ({"sample_rate": 0.1, "noise_multiplier": 0.0, "steps": 1}, "noise multiplier"),
        ({"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 0}, "steps"),
    ],
    ids=["q0", "z0", "steps0"],
)
def test_bad_event_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(PipelineInputError, match=match):
        training_event(**kwargs)
