"""The kernel: dual form = primal form, post-processing of the methods, the λ sweep."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.attribution import Attributor, Features, kernel_scores
from pipeline.attribution.kernel import finish_scores
from pipeline.errors import PipelineInputError


def _features(phi, method="trak", residual=None):
    return Features(phi=phi.astype(np.float32), method=method, timesteps=10, projection_dim=phi.shape[1], seed=0,
                    model_hash="h", ids=np.arange(len(phi)), residual=residual)


@pytest.mark.parametrize(("n", "p"), [(20, 64), (64, 20), (30, 30)], ids=["N<P", "N>P", "N=P"])
def test_dual_equals_primal(n, p):
    rng = np.random.default_rng(n * p)
    phi, q = rng.standard_normal((n, p)), rng.standard_normal((5, p))
    lambdas = [1e-2, 1.0, 1e2]
    dual = kernel_scores(phi, q, lambdas, form="dual")
    primal = kernel_scores(phi, q, lambdas, form="primal")
    direct = np.stack([q @ np.linalg.solve(phi.T @ phi + lam * np.eye(p), phi.T) for lam in lambdas])
    np.testing.assert_allclose(dual, primal, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dual, direct, rtol=1e-6, atol=1e-9)


def test_attributor_matches_formula_and_postprocessing():
    rng = np.random.default_rng(1)
    phi, q = rng.standard_normal((12, 40)), rng.standard_normal((3, 40))
    r = rng.uniform(0.2, 0.4, 12)
    raw = q @ np.linalg.solve(phi.T @ phi + 0.5 * np.eye(40), phi.T)
    for method, expected in [("trak", raw), ("trak-squared", raw**2), ("das", raw * r), ("das-squared", (raw * r) ** 2)]:
        att = Attributor(_features(phi, method, r if "das" in method else None), lambda_=0.5)
        np.testing.assert_allclose(att.scores(_features(q, method)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(finish_scores(raw, "dtrak-squared", None), raw**2)


def test_rejects_bad_lambda_and_mismatched_features():
    rng = np.random.default_rng(2)
    train = _features(rng.standard_normal((5, 8)))
    with pytest.raises(PipelineInputError, match="lambda"):
        Attributor(train, lambda_=0.0)
    with pytest.raises(PipelineInputError, match="P="):
        Attributor(train, lambda_=1.0).scores(_features(rng.standard_normal((2, 9))))
    with pytest.raises(PipelineInputError, match="featurize both"):
        Attributor(train, lambda_=1.0).scores(_features(rng.standard_normal((2, 8)), "dtrak"))
