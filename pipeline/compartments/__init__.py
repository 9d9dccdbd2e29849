"""Compartments (CDM, Golatkar et al. 2023): per-shard decoder adapters composed at sampling time.

Public API::

    ComposedEps(eps_fns, priors, *, weight_fn=None, mode="posterior"|"naive", allowed=None, lazy=False)
    compose_eps(eps, weights), naive_weights(priors, batch), restrict_weights(weights, allowed), guide(u, c, s)
    ddpm_sample(eps_fn, shape, alphas_cumprod, generator=None), linear_alphas_cumprod(steps)
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

__all__ = [
    "ComposedEps",
    "WeightMode",
    "compose_eps",
    "ddpm_sample",
    "guide",
    "linear_alphas_cumprod",
    "naive_weights",
    "restrict_weights",
]
