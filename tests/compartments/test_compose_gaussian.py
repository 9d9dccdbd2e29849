"""Proposition 3.1 on analytic Gaussian shards: exact composition, access sets, naive hybrids vs posterior."""

from __future__ import annotations

import pytest
import torch

from pipeline.compartments.compose import (
    ComposedEps,
    compose_eps,
    ddpm_sample,
    guide,
    linear_alphas_cumprod,
    naive_weights,
    restrict_weights,
)
from pipeline.compartments.gaussian import GaussianShards, mmd_rbf
from pipeline.errors import PipelineInputError

ABAR = linear_alphas_cumprod(100)


def shards(sizes=(300, 100), means=((-3.0, 0.0), (3.0, 0.0)), stds=(0.4, 0.6)) -> GaussianShards:
    return GaussianShards(means, stds, sizes, ABAR)


def test_composed_eps_equals_mixture_eps_with_oracle_weights():
    g = shards()
    gen = torch.Generator().manual_seed(0)
    x = 4.0 * torch.randn(512, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 100, (512,), generator=gen)
    composed = ComposedEps({"a": g.eps_fn(0), "b": g.eps_fn(1)}, {"a": 300, "b": 100}, weight_fn=g.posterior)
    got = composed(x, t)
    want = g.mixture_eps(x, t)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert float((got - want).abs().max()) < 1e-9  # float64: far inside 1e-6


def test_three_shards_exact_and_access_set_is_the_restricted_mixture():
    g = GaussianShards(((-4.0,), (0.0,), (4.0,)), (0.5, 0.3, 0.7), (1, 2, 3), ABAR)
    x = torch.linspace(-8, 8, 101, dtype=torch.float64)[:, None]
    t = torch.full((101,), 40)
    fns = {"a": g.eps_fn(0), "b": g.eps_fn(1), "c": g.eps_fn(2)}
    full = ComposedEps(fns, {"a": 1, "b": 2, "c": 3}, weight_fn=g.posterior)
    assert torch.allclose(full(x, t), g.mixture_eps(x, t), atol=1e-9)
    # access set {a, c}: renormalised weights = the posterior of the mixture of a and c alone (λ ∝ 1:3)
    sub = GaussianShards(((-4.0,), (4.0,)), (0.5, 0.7), (1, 3), ABAR)
    loaded = []

    def loader(name):
        def load():
            loaded.append(name)
            return fns[name]
        return load

    restricted = ComposedEps({n: loader(n) for n in "abc"}, {"a": 1, "b": 2, "c": 3}, weight_fn=g.posterior,
                             allowed=["a", "c"], lazy=True)
    assert loaded == ["a", "c"]  # b's compartment is never loaded
    assert torch.allclose(restricted(x, t), sub.mixture_eps(x, t), atol=1e-9)
    # even a shard without any compartment may be outside the access set
    ComposedEps({"a": fns["a"]}, {"a": 1, "b": 2, "c": 3}, weight_fn=g.posterior, allowed=["a"])


def test_weight_helpers_and_guidance():
    w = naive_weights([3, 1], 4)
    assert torch.allclose(w, torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64))
    r = restrict_weights(torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]), [0, 1])
    assert torch.allclose(r, torch.tensor([[0.4, 0.6], [0.5, 0.5]]))
    eps = torch.randn(2, 3, 5)
    assert torch.allclose(compose_eps(eps, torch.tensor([[1.0, 0.0]] * 3)), eps[0])
    u, c = torch.randn(4, 2), torch.randn(4, 2)
    assert torch.allclose(guide(u, c, 1.0), c) and torch.allclose(guide(u, c, 0.0), u)
    with pytest.raises(PipelineInputError):
        ComposedEps({"a": lambda x, t: x}, {"a": 1}, mode="posterior")
    with pytest.raises(PipelineInputError):
        ComposedEps({"a": lambda x, t: x}, {"a": 1}, mode="naive", allowed=["z"])
    with pytest.raises(PipelineInputError):
        ComposedEps({"a": lambda x, t: x}, {"a": 1}, mode="bogus")


def test_guidance_on_composed_eps_is_linear_in_the_composition():
    """CFG applied to the composed ε equals the composition of guided ε_i when the weights are shared."""
    g = shards()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.full((64,), 30)
    w = g.posterior(x, t)
    eu = [g.eps(0, x, t), g.eps(1, x, t)]
    ec = [e + 0.1 for e in eu]
    guided = guide(compose_eps(eu, w), compose_eps(ec, w), 2.5)
    assert torch.allclose(guided, compose_eps([guide(a, b, 2.5) for a, b in zip(eu, ec, strict=True)], w))


def test_naive_weights_sample_hybrids_posterior_weights_do_not():
    g = shards(sizes=(200, 200), stds=(0.3, 0.3))
    names = {"a": g.eps_fn(0), "b": g.eps_fn(1)}
    sizes = {"a": 200, "b": 200}
    post = ComposedEps(names, sizes, weight_fn=g.posterior)
    naive = ComposedEps(names, sizes, mode="naive")
    s_post = ddpm_sample(post, (2000, 2), ABAR, generator=torch.Generator().manual_seed(0))
    s_naive = ddpm_sample(naive, (2000, 2), ABAR, generator=torch.Generator().manual_seed(0))
    real, _ = g.sample(2000, generator=torch.Generator().manual_seed(1))
    assert g.between_mass(s_post) < 0.02
    assert g.between_mass(s_naive) > 0.5  # the geometric mixture sits between the modes
    mass = g.mode_mass(s_post)
    assert torch.allclose(mass, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=0.05)
    assert mmd_rbf(s_post, real) < 0.02 < mmd_rbf(s_naive, real)
    # shard-level attribution is recorded along the trajectory
    assert abs(sum(post.mean_weights().values()) - 1.0) < 1e-9
