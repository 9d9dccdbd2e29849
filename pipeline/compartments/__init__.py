"""Compartments (CDM, Golatkar et al. 2023): per-shard decoder adapters composed at sampling time.

Public API::

    ComposedEps(eps_fns, priors, *, weight_fn=None, mode="posterior"|"naive", allowed=None, lazy=False)
    compose_eps(eps, weights), naive_weights(priors, batch), restrict_weights(weights, allowed), guide(u, c, s)
    ddpm_sample(eps_fn, shape, alphas_cumprod, generator=None), linear_alphas_cumprod(steps)
    ShardPosterior(names, sizes, input_shape, *, num_timesteps, hidden=128).fit(data, labels, alphas_cumprod, *,
        noise_multiplier, max_grad_norm, batch_size, steps) ; .weights(x_t, t, allowed=None) -> (B, n)
    posterior_event(sample_rate=, noise_multiplier=, steps=), charge_posterior(ledger, {scope: N}, event)
"""

from pipeline.compartments.compose import (
    ComposedEps,
    WeightMode,
    compose_eps,
    ddpm_sample,
    guide,
    linear_alphas_cumprod,
    naive_weights,
    restrict_weights,
)
from pipeline.compartments.posterior import (
    PosteriorOutcome,
    ShardPosterior,
    charge_posterior,
    posterior_event,
)

__all__ = [
    "PosteriorOutcome",
    "ShardPosterior",
    "charge_posterior",
    "posterior_event",
    "ComposedEps",
    "WeightMode",
    "compose_eps",
    "ddpm_sample",
    "guide",
    "linear_alphas_cumprod",
    "naive_weights",
    "restrict_weights",
]
