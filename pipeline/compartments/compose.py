"""Composition of per-shard denoisers (CDM, Golatkar et al. 2023, Proposition 3.1) and its DDPM/DDIM sampling.

The maths (exact whatever the models are): with shards D_1..D_n, priors λ_i = |D_i| / Σ_j |D_j| and one forward
kernel q(x_t | x_0) shared by every shard, p_t = Σ_i λ_i p_{i,t}, hence

    ∇ log p_t(x) = Σ_i w_i(x, t) ∇ log p_{i,t}(x),   w_i(x, t) = λ_i p_{i,t}(x) / p_t(x) = P(shard i | x_t = x),

and in ε-parameterisation (ε = -sqrt(1 - ᾱ_t) ∇ log p_t) the composed noise prediction is

    ε̂(x, t) = Σ_i w_i(x, t) ε_i(x, t).

``naive`` weights (w ≡ λ) give the score of the normalised geometric mixture ∝ Π p_{i,t}^{λ_i}, not of the
mixture: its samples are hybrids between the shards' modes (kept only for comparison). An access set A
renormalises the weights over A: w_i^A = w_i / Σ_{j∈A} w_j (the exact posterior of the mixture restricted to A,
since λ_i^A ∝ λ_i) and the denoisers outside A are never evaluated. Classifier-free guidance is applied to the
composed ε: ε̃ = ε̂(x, t, ∅) + s (ε̂(x, t, c) − ε̂(x, t, ∅)) (the tiny decoder's form of CFG).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence

import torch

from pipeline.errors import PipelineInputError

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

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WeightMode(enum.Enum):
    """How the composition weights w_i(x, t) are obtained."""

    POSTERIOR = "posterior"  #: P(shard i | x_t) from a shard classifier (or any weight function)
    NAIVE = "naive"  #: w = λ (comparison only: samples hybrids)

    @classmethod
    def parse(cls, value: WeightMode | str) -> WeightMode:
        try:
            return cls(value)
        except ValueError:
            raise PipelineInputError(f"--weights must be 'posterior' or 'naive'; found {value!r}") from None


def compose_eps(eps: torch.Tensor | Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """ε̂ = Σ_i w_i ε_i for a batch.

    Args:
        eps: (n, B, ...) stacked per-shard predictions (or a sequence of n tensors (B, ...)).
        weights: (B, n) non-negative weights (rows summing to 1).

    Returns:
        (B, ...) composed prediction.
    """
    stacked = torch.stack(list(eps)) if not isinstance(eps, torch.Tensor) else eps
    n, batch = stacked.shape[0], stacked.shape[1]
    if weights.shape != (batch, n):
        raise PipelineInputError(f"weights must have shape ({batch}, {n}); found {tuple(weights.shape)}")
    w = weights.to(stacked.dtype).T.reshape(n, batch, *([1] * (stacked.ndim - 2)))
    return (w * stacked).sum(dim=0)


def naive_weights(priors: Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
    """(B, n) rows equal to the normalised priors λ (the comparison baseline)."""
    lam = torch.as_tensor(priors, dtype=torch.float64)
    if lam.ndim != 1 or len(lam) == 0 or bool((lam < 0).any()) or float(lam.sum()) <= 0:
        raise PipelineInputError(f"priors must be non-negative with a positive sum; found {lam.tolist()}")
    return (lam / lam.sum()).expand(batch, -1).clone()


def restrict_weights(weights: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
    """w^A: columns ``allowed`` of ``weights`` renormalised to sum to 1 per row, shape (B, |A|).

    A row whose allowed weights underflow to 0 (numerically impossible for a softmax, possible for an oracle far in
    the tails) falls back to uniform over A.
    """
    if len(allowed) == 0:
        raise PipelineInputError("the access set is empty; allow at least one shard")
    sub = weights[:, list(allowed)]
    total = sub.sum(dim=1, keepdim=True)
    uniform = torch.full_like(sub, 1.0 / sub.shape[1])
    return torch.where(total > 0, sub / total.clamp_min(torch.finfo(sub.dtype).tiny), uniform)


def guide(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ε_u + s (ε_c − ε_u) (s = 1: conditional; s = 0: unconditional)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


class ComposedEps:
    """ε̂(x, t) = Σ_{i∈A} w_i^A(x, t) ε_i(x, t) over named per-shard ε-predictors.

    Args:
        eps_fns: shard name -> ε-predictor ``f(x, t) -> ε`` (or a zero-argument loader returning one when
            ``lazy``; only the allowed shards' loaders are ever called).
        priors: shard name -> |D_i| (or λ_i); every name of ``eps_fns`` must have one.
        weight_fn: ``g(x, t) -> (B, n)`` posterior weights over ``names`` (in that order); required for
            ``mode="posterior"``.
        mode: "posterior" or "naive".
        allowed: the access set (names); default every shard.
        lazy: ``eps_fns`` values are loaders.

    Attributes:
        names: every shard, in weight-column order.
        allowed: the access set, in that order.
        trajectory: after a call sequence, the list of (B, |A|) weights used (cleared by :meth:`reset`).
    """

    def __init__(self, eps_fns: Mapping[str, EpsFn | Callable[[], EpsFn]], priors: Mapping[str, float], *,
                 weight_fn: WeightFn | None = None, mode: WeightMode | str = WeightMode.POSTERIOR,
                 allowed: Sequence[str] | None = None, names: Sequence[str] | None = None,
                 lazy: bool = False) -> None:
        self.names = list(names) if names is not None else list(priors)
        self.mode = WeightMode.parse(mode)
        unknown = [a for a in (allowed or []) if a not in self.names]
        if unknown:
            raise PipelineInputError(f"unknown shard(s) in the access set: {', '.join(unknown)}; "
                                     f"known: {', '.join(self.names)}")
        self.allowed = [n for n in self.names if allowed is None or n in set(allowed)]
        if not self.allowed:
            raise PipelineInputError("the access set is empty; allow at least one shard")
        missing = [n for n in self.allowed if n not in eps_fns]
        if missing:
            raise PipelineInputError(f"no compartment for shard(s) {', '.join(missing)}")
        self.priors = torch.tensor([float(priors[n]) for n in self.names], dtype=torch.float64)
        if self.mode is WeightMode.POSTERIOR and weight_fn is None:
            raise PipelineInputError("posterior weights need a shard classifier (weight_fn); or pass mode='naive'")
        self.weight_fn = weight_fn
        self._index = [self.names.index(n) for n in self.allowed]
        # only the allowed shards' predictors are touched (a non-allowed loader is never called)
        self._fns = {n: (eps_fns[n]() if lazy else eps_fns[n]) for n in self.allowed}
        self.trajectory: list[torch.Tensor] = []

    def reset(self) -> None:
        self.trajectory = []

    def weights(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, |A|) weights w^A(x, t) over the allowed shards."""
        if self.mode is WeightMode.NAIVE:
            full = naive_weights(self.priors, len(x))
        else:
            full = self.weight_fn(x, t).to(torch.float64)
        return restrict_weights(full, self._index)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | int | float, *args, **kwargs) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.ndim == 0:
            t = t.expand(len(x))
        w = self.weights(x, t)
        self.trajectory.append(w.detach().cpu())
        eps = [self._fns[n](x, t, *args, **kwargs) for n in self.allowed]
        return compose_eps(eps, w.to(x.dtype))

    def mean_weights(self) -> dict[str, float]:
        """Shard-level attribution: the mean of w_i over the recorded trajectory (and batch), per allowed shard."""
        if not self.trajectory:
            return {n: 0.0 for n in self.allowed}
        mean = torch.stack([w.mean(dim=0) for w in self.trajectory]).mean(dim=0)
        return {n: float(v) for n, v in zip(self.allowed, mean, strict=True)}


def ddpm_sample(eps_fn: EpsFn, shape: Sequence[int], alphas_cumprod: torch.Tensor, *,
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                clip: float | None = None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, σ_t² = β_t) over the full schedule, t = T-1 .. 0.

    With ``clip`` (e.g. 1.0 for data in [-1, 1]) the predicted x̂_0 is clipped to [-clip, clip] and the step uses
    the posterior q(x_{t-1} | x_t, x̂_0) (mean and variance β̃_t), as diffusers' DDPM does.

    Args:
        eps_fn: ``f(x_t, t) -> ε`` with t a (B,) long tensor of 0-based timesteps.
        shape: sample shape (B, ...).
        alphas_cumprod: (T,) ᾱ_t.
        generator: randomness (post-processing of the models: free to seed).
    """
    abar = alphas_cumprod.to(dtype)
    x = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    for t in range(len(abar) - 1, -1, -1):
        a_t = abar[t]
        a_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=dtype)
        beta = 1.0 - a_t / a_prev
        eps = eps_fn(x, torch.full((shape[0],), t, dtype=torch.long)).to(dtype)
        var = beta
        if clip is None:
            mean = (x - beta / torch.sqrt(1.0 - a_t) * eps) / torch.sqrt(1.0 - beta)
        else:
            x0 = ((x - torch.sqrt(1.0 - a_t) * eps) / torch.sqrt(a_t)).clamp(-clip, clip)
            mean = (torch.sqrt(a_prev) * beta * x0 + torch.sqrt(1.0 - beta) * (1.0 - a_prev) * x) / (1.0 - a_t)
            var = beta * (1.0 - a_prev) / (1.0 - a_t)
        if t > 0:
            x = mean + torch.sqrt(var) * torch.randn(tuple(shape), generator=generator, dtype=dtype)
        else:
            x = mean
    return x


def linear_alphas_cumprod(steps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of a linear β schedule rescaled to ``steps`` (β_end·1000/steps), as a float64 tensor."""
    scale = 1000.0 / steps
    betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


