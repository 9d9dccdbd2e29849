"""``ComposedDecoder``: the tiny decoder's DDIM sampler over composed per-shard adapters (CDM).

At each DDIM step, for every ALLOWED shard i, the adapted UNet predicts ε_i(x_t, t, c) and ε_i(x_t, t, ∅); the
weights w^A(x_t, t) come from the shard classifier (or λ for ``weights="naive"``), renormalised over the access
set; the composed predictions ε̂(c) = Σ w_i ε_i(c), ε̂(∅) = Σ w_i ε_i(∅) are guided, ε̃ = ε̂(∅) + s (ε̂(c) − ε̂(∅)),
and the scheduler steps with ε̃. Two sampler options (defaults: the plain composition above): ``eta`` is DDIM's η
(0 deterministic, 1 the DDPM-like ancestral step, whose fresh noise corrects the tiny decoder's errors), and
``base_guidance`` g applies ε̂ ← ε_base + g (ε̂ − ε_base) with the PUBLIC base decoder's ε_base before the
classifier-free guidance: g > 1 pushes samples away from the public distribution towards the allowed shards'
("autoguidance" with the base as the weaker model, Karras et al. 2024); g = 1 never evaluates the base. Neither
reads another shard's adapter. ``shard_weights`` after :meth:`generate` is the mean of w over the trajectory and
the batch: the shard-level attribution of that generation. Everything here is post-processing of DP releases
(adapters, classifier) and may be seeded freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.compartments.compose import WeightMode, compose_eps, guide, naive_weights, restrict_weights
from pipeline.decoders.base import check_generate_args
from pipeline.errors import PipelineInputError

__all__ = ["ComposedDecoder", "check_sampler"]


def check_sampler(eta: float, base_guidance: float, *,
                  names: tuple[str, str] = ("--eta", "--base-guidance")) -> tuple[float, float]:
    """The one validator of the composed sampler's options; ``names`` are how the caller's interface spells them
    (the CLI's options by default; the service passes its JSON fields). The message never repeats the value: the
    service's 422s never echo what was submitted."""
    if not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
        raise PipelineInputError(f"{names[0]} must be in [0, 1] (DDIM's eta)")
    if not (isinstance(base_guidance, int | float) and 1.0 <= base_guidance <= 10.0):
        raise PipelineInputError(f"{names[1]} must be in [1, 10] (1 = plain composition)")
    return float(eta), float(base_guidance)


class ComposedDecoder:
    """Compose per-shard adapted decoders at sampling time.

    Args:
        base: the public base decoder (its scheduler is used).
        adapters: shard -> adapted decoder (or a zero-argument loader; only allowed shards are loaded).
        sizes: shard -> |D_i| (priors); defines the weight-column order.
        posterior: a :class:`ShardPosterior` over the same names (required for ``weights="posterior"``).
        weights: "posterior" or "naive".
        allowed: the access set (default: every shard).
        eta: DDIM η in [0, 1] (0 = deterministic DDIM, 1 = ancestral sampling).
        base_guidance: g ≥ 1 in ε_base + g (ε̂ − ε_base) (1 = the plain composition).
    """

    def __init__(self, base, adapters: Mapping[str, object | Callable[[], object]], sizes: Mapping[str, int], *,
                 posterior=None, weights: WeightMode | str = WeightMode.POSTERIOR,
                 allowed: Sequence[str] | None = None, eta: float = 0.0, base_guidance: float = 1.0) -> None:
        self.base = base
        self.eta, self.base_guidance = check_sampler(eta, base_guidance)
        self.names = list(sizes)
        self.mode = WeightMode.parse(weights)
        unknown = sorted(set(allowed or []) - set(self.names))
        if unknown:
            raise PipelineInputError(f"unknown shard(s) in the access set: {', '.join(unknown)}; "
                                     f"shards with a compartment: {', '.join(self.names)}")
        self.allowed = [n for n in self.names if allowed is None or n in set(allowed)]
        if not self.allowed:
            raise PipelineInputError("the access set is empty; pass at least one --shard")
        if self.mode is WeightMode.POSTERIOR:
            if posterior is None:
                raise PipelineInputError("posterior weights need the shard classifier; or pass --weights naive")
            if list(posterior.names) != self.names:
                raise PipelineInputError("the shard classifier covers other shards than the compartments; retrain it")
        self.posterior = posterior
        self.priors = torch.tensor([float(sizes[n]) for n in self.names], dtype=torch.float64)
        self._columns = [self.names.index(n) for n in self.allowed]
        self.decoders = {}
        for name in self.allowed:  # a non-allowed shard's adapter is never loaded nor evaluated
            value = adapters[name]
            self.decoders[name] = value() if callable(value) and not hasattr(value, "unet") else value
        self.adapter_sha256: dict[str, str] = {}
        self.shard_weights: dict[str, float] = {}
        self.weight_trajectory: list[tuple[int, list[float]]] = []

    @classmethod
    def from_index(cls, index_dir: str | Path, *, decoder=None, allowed: Sequence[str] | None = None,
                   weights: WeightMode | str = WeightMode.POSTERIOR, eta: float = 0.0,
                   base_guidance: float = 1.0) -> ComposedDecoder:
        """Load the compartments stored in an index (allowed adapters and the classifier verified first).

        Raises:
            CompartmentsDamaged: a damaged allowed adapter, classifier or manifest.
            PipelineInputError: no compartments, unknown shards, another base decoder.
        """
        from pipeline.compartments.posterior import ShardPosterior
        from pipeline.compartments.store import Compartments
        from pipeline.finetune import load_adapter

        store = Compartments(index_dir)
        if not store.exists or not store.shards:
            raise PipelineInputError(f"index '{index_dir}' has no compartments; run 'dprdm compartments train'")
        names = sorted(store.shards)
        allow = names if allowed is None else list(allowed)
        unknown = sorted(set(allow) - set(names))
        if unknown:
            raise PipelineInputError(f"no compartment for shard(s) {', '.join(unknown)}; known: {', '.join(names)}")
        mode = WeightMode.parse(weights)
        check_sampler(eta, base_guidance)
        store.verify(allow, classifier=mode is WeightMode.POSTERIOR)
        if decoder is None:
            from pipeline.decoders import TinyDecoder

            decoder = TinyDecoder.from_pretrained()
        posterior = ShardPosterior.from_bytes(*store.classifier_bytes()) if mode is WeightMode.POSTERIOR else None
        sizes = {n: int(store.shards[n]["records"]) for n in names}
        loaders = {n: (lambda n=n: load_adapter(decoder, store.adapter_dir(n))) for n in allow}
        composed = cls(decoder, loaders, sizes, posterior=posterior, weights=mode, allowed=allow, eta=eta,
                       base_guidance=base_guidance)
        composed.adapter_sha256 = {n: store.shards[n]["sha256"] for n in allow}
        if mode is WeightMode.POSTERIOR:
            composed.adapter_sha256["classifier"] = store.classifier["sha256"]
        return composed

    def weights(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, |A|) w^A(x_t, t)."""
        if self.mode is WeightMode.NAIVE:
            full = naive_weights(self.priors, len(x))
        else:
            full = self.posterior.weights(x, t)
        return restrict_weights(full, self._columns)

    @property
    def condition_dim(self) -> int:
        return int(self.base.condition_dim)

    @property
    def embedding_dim(self) -> int:
        return self.condition_dim

    @property
    def image_size(self) -> int:
        return int(self.base.unet.config.sample_size)

    @property
    def model_id(self) -> str:
        """``cdm[<base model id>:<mode>:<allowed shards>]``."""
        return f"cdm[{getattr(self.base, 'model_id', type(self.base).__name__)}:{self.mode.value}:{','.join(self.allowed)}]"

    @property
    def sha256(self) -> str:
        """sha256 over the base weights' id, the mode and the allowed adapters' (and classifier's) hashes."""
        import hashlib
        import json

        body = {"base": getattr(self.base, "sha256", None), "mode": self.mode.value, "allowed": self.allowed,
                "parts": self.adapter_sha256}
        if (self.eta, self.base_guidance) != (0.0, 1.0):
            body["sampler"] = {"eta": self.eta, "base_guidance": self.base_guidance}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def _compose(self, eps: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i ε_i over the allowed shards, then ε_base + g (· − ε_base) when the base is the last entry."""
        if self.base_guidance == 1.0:
            return compose_eps(eps, w)
        return guide(eps[-1], compose_eps(eps[:-1], w), self.base_guidance)

    @torch.no_grad()
    def generate(self, conditions: torch.Tensor, *, num_images_per_condition: int = 1, steps: int = 25,
                 guidance_scale: float = 2.0, generator: torch.Generator | None = None) -> list[Image.Image]:
        """DDIM (η = ``self.eta``) over the composed ε, base guidance, then classifier-free guidance (module doc)."""
        from diffusers import DDIMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        cond = check_generate_args(conditions, self.condition_dim, num_images_per_condition=num_images_per_condition,
                                   steps=steps, guidance_scale=guidance_scale)
        cond = cond.repeat_interleave(num_images_per_condition, dim=0)
        if guidance_scale == 0:
            cond = torch.zeros_like(cond)
        use_cfg = guidance_scale > 1.0
        context = torch.cat([torch.zeros_like(cond), cond]) if use_cfg else cond
        scheduler = DDIMScheduler.from_config(self.base.scheduler.config)
        size = int(self.base.unet.config.sample_size)
        latents = randn_tensor((len(cond), self.base.unet.config.in_channels, size, size), generator=generator,
                               dtype=torch.float32)
        scheduler.set_timesteps(steps)
        self.weight_trajectory = []
        for t in scheduler.timesteps:
            w = self.weights(latents, torch.full((len(latents),), int(t), dtype=torch.long))
            self.weight_trajectory.append((int(t), w.mean(dim=0).tolist()))
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            unets = [self.decoders[n].unet for n in self.allowed]
            if self.base_guidance != 1.0:
                unets.append(self.base.unet)
            eps = [unet(model_in, t, encoder_hidden_states=context[:, None, :], class_labels=context).sample
                   for unet in unets]
            halves = [[e.chunk(2)[k] for e in eps] for k in (0, 1)] if use_cfg else [eps]
            parts = [self._compose(half, w.float()) for half in halves]
            composed = guide(parts[0], parts[1], guidance_scale) if use_cfg else parts[0]
            latents = scheduler.step(composed, t, latents, eta=self.eta, generator=generator).prev_sample
        mean = np.mean([w for _, w in self.weight_trajectory], axis=0)
        self.shard_weights = {n: float(v) for n, v in zip(self.allowed, mean, strict=True)}
        pixels = ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(p[0]), mode="L") for p in pixels]
