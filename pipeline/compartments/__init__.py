"""Compartments (CDM, Golatkar et al. 2023): per-shard decoder adapters composed at sampling time.

Public API::

    ComposedEps(eps_fns, priors, *, weight_fn=None, mode="posterior"|"naive", allowed=None, lazy=False)
    compose_eps(eps, weights), naive_weights(priors, batch), restrict_weights(weights, allowed), guide(u, c, s)
    ddpm_sample(eps_fn, shape, alphas_cumprod, generator=None), linear_alphas_cumprod(steps)
    ShardPosterior(names, sizes, input_shape, *, num_timesteps, hidden=128).fit(data, labels, alphas_cumprod, *,
        noise_multiplier, max_grad_norm, batch_size, steps) ; .weights(x_t, t, allowed=None) -> (B, n)
    posterior_event(sample_rate=, noise_multiplier=, steps=), charge_posterior(ledger, {scope: N}, event)
    train_compartments(index, ledger, *, shards=None, epsilon=None, non_private=False, classifier_epsilon=None,
                       decoder=None, adapter=None, classifier=None) -> dict
    forget(index, shard, ledger, *, ids=None, sources=None, decoder=None) -> {"shard", "removed", "retrained",
        "unchanged", "adapter_sha256", "seconds", "full_retrain_seconds_estimate"}
    ComposedDecoder.from_index(index_dir, *, decoder=None, allowed=None, weights="posterior"|"naive", eta=0.0,
                               base_guidance=1.0)
        .generate(conditions, ...) -> images ; .shard_weights ; .weight_trajectory
    Compartments(index_dir) (store: .verify(), .info(), .adapter_hashes()), mark_public(index_dir, shard, note=)
    compartments_lock(index_dir): the writers' exclusive lock; a second writer gets CompartmentsBusy (exit 3)
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
from pipeline.compartments.decoder import ComposedDecoder
from pipeline.compartments.posterior import (
    PosteriorOutcome,
    ShardPosterior,
    charge_posterior,
    posterior_event,
)
from pipeline.compartments.store import (
    Compartments,
    CompartmentsBusy,
    CompartmentsDamaged,
    compartments_lock,
    mark_public,
)
from pipeline.compartments.train import decoder_alphas_cumprod, forget, train_compartments

__all__ = [
    "ComposedDecoder",
    "Compartments",
    "CompartmentsBusy",
    "CompartmentsDamaged",
    "compartments_lock",
    "forget",
    "mark_public",
    "train_compartments",
    "PosteriorOutcome",
    "ShardPosterior",
    "charge_posterior",
    "posterior_event",
    "ComposedEps",
    "WeightMode",
    "compose_eps",
    "ddpm_sample",
    "guide",
    "decoder_alphas_cumprod",
    "linear_alphas_cumprod",
    "naive_weights",
    "restrict_weights",
]
