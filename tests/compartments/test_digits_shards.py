"""Digits shards with disjoint classes ({0-4} | {5-9}): access sets and naive hybrids (CDM tiny-scale protocol).

Per shard a small ε-MLP on sklearn's 8×8 digits, the shard classifier learned on the pooled shards with the forward
process; samples judged by a kNN classifier (k = 5) trained on the real digits. Everything is seeded (the models
are post-processing here), so the figures are reproducible: access set {A}: 0.956 in A's classes; ambiguous
(A-mass in (0.2, 0.8)) naive 0.198 vs posterior 0.068.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.compartments.compose import ComposedEps, ddpm_sample, linear_alphas_cumprod
from pipeline.compartments.posterior import ShardPosterior
from pipeline.compartments.toy import load_digits_shards, train_eps

pytestmark = pytest.mark.slow  # ~2 min on one CPU thread

ABAR = linear_alphas_cumprod(100)


@pytest.fixture(scope="module")
def setup():
    from sklearn.neighbors import KNeighborsClassifier

    x, y = load_digits_shards()
    a = y < 5
    settings = {"steps": 3000, "hidden": 512, "lr": 1e-3, "batch_size": 256}
    ma, mb = train_eps(x[a], ABAR, seed=0, **settings), train_eps(x[~a], ABAR, seed=1, **settings)
    sizes = {"a": int(a.sum()), "b": int((~a).sum())}
    post = ShardPosterior(["a", "b"], sizes, (64,), num_timesteps=100, hidden=128)
    post.fit(x, (~a).long(), ABAR, noise_multiplier=0.0, max_grad_norm=10.0, batch_size=128, steps=400, lr=3e-3,
             _seed=0)
    fns = {"a": lambda z, t: ma(z, t).double(), "b": lambda z, t: mb(z, t).double()}
    judge = KNeighborsClassifier(5).fit(x.numpy(), y.numpy())
    return fns, sizes, post, judge


def _judge(judge, composed):
    s = ddpm_sample(composed, (500, 64), ABAR, generator=torch.Generator().manual_seed(0)).clamp(-1, 1).float()
    p = judge.predict_proba(s.numpy())
    mass_a = p[:, :5].sum(1)
    return {"in_a": float((p.argmax(1) < 5).mean()), "ambiguous": float(((mass_a > 0.2) & (mass_a < 0.8)).mean()),
            "low_confidence": float((p.max(1) < 0.5).mean())}


def test_access_set_a_samples_a_classes(setup):
    fns, sizes, post, judge = setup
    only_a = _judge(judge, ComposedEps({"a": fns["a"]}, sizes, weight_fn=post.weights, allowed=["a"]))
    assert only_a["in_a"] >= 0.95


def test_naive_hybrids_far_above_posterior(setup):
    fns, sizes, post, judge = setup
    posterior = _judge(judge, ComposedEps(fns, sizes, weight_fn=post.weights))
    naive = _judge(judge, ComposedEps(fns, sizes, mode="naive"))
    assert naive["ambiguous"] >= 2.0 * posterior["ambiguous"]
    assert naive["low_confidence"] >= 2.0 * posterior["low_confidence"]
    assert np.isclose(posterior["in_a"], sizes["a"] / sum(sizes.values()), atol=0.1)  # both shards, λ-weighted
