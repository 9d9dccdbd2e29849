"""Analytic Gaussian shards: closed-form ε_i, oracle posterior and mixture ε (tests and benchmark of CDM).

Shard i is N(μ_i, s_i² I) in d dimensions. Under x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε its noisy marginal is
p_{i,t} = N(sqrt(ᾱ_t) μ_i, v_{i,t} I) with v_{i,t} = ᾱ_t s_i² + 1 - ᾱ_t, so

    ε_i(x, t) = sqrt(1 - ᾱ_t) (x - sqrt(ᾱ_t) μ_i) / v_{i,t},
    w_i(x, t) = λ_i p_{i,t}(x) / Σ_j λ_j p_{j,t}(x).

:meth:`GaussianShards.mixture_eps` computes -sqrt(1 - ᾱ_t) ∇_x log p_t(x) of the mixture by autograd of its
log-density (independently of the composition formula, so the test of Proposition 3.1 is not circular).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["GaussianShards"]


class GaussianShards:
    """n isotropic Gaussian shards with priors λ_i ∝ sizes_i.

    Args:
        means: (n, d) shard means.
        stds: (n,) shard standard deviations.
        sizes: (n,) shard sizes |D_i| (the priors, normalised).
        alphas_cumprod: (T,) ᾱ_t of the forward process.
    """

    def __init__(self, means, stds, sizes, alphas_cumprod: torch.Tensor) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        sizes = torch.as_tensor(sizes, dtype=torch.float64)
        self.priors = sizes / sizes.sum()
        self.sizes = sizes
        self.abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.n, self.dim = self.means.shape

    def _at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.abar[torch.as_tensor(t, dtype=torch.long)]  # (B,)
        var = a[:, None] * self.stds[None, :] ** 2 + (1.0 - a[:, None])  # (B, n)
        return a, var

    def eps(self, i: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Closed-form ε_i(x, t) of shard i, (B, d)."""
        a, var = self._at(t)
        x = x.to(torch.float64)
        return torch.sqrt(1.0 - a)[:, None] * (x - torch.sqrt(a)[:, None] * self.means[i]) / var[:, i:i + 1]

    def eps_fn(self, i: int):
        return lambda x, t: self.eps(i, x, t)

    def log_joint(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, n) log λ_i + log p_{i,t}(x)."""
        a, var = self._at(t)
        x = x.to(torch.float64)
        diff = x[:, None, :] - torch.sqrt(a)[:, None, None] * self.means[None]
        logp = -0.5 * (diff ** 2).sum(-1) / var - 0.5 * self.dim * torch.log(2 * torch.pi * var)
        return logp + torch.log(self.priors)[None]

    def posterior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Oracle w_i(x, t) = P(shard i | x_t = x), (B, n)."""
        return torch.softmax(self.log_joint(x, t), dim=1)

    def mixture_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """-sqrt(1 - ᾱ_t) ∇ log p_t(x) of the mixture, by autograd of its log-density (independent reference)."""
        x = x.detach().to(torch.float64).requires_grad_(True)
        logp = torch.logsumexp(self.log_joint(x, t), dim=1).sum()
        (grad,) = torch.autograd.grad(logp, x)
        a = self.abar[torch.as_tensor(t, dtype=torch.long)]
        return -torch.sqrt(1.0 - a)[:, None] * grad

    def sample(self, count: int, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` records x_0 of the pooled data with their shard labels (exact proportions λ, rounded)."""
        per = torch.round(self.priors * count).long()
        per[-1] = count - per[:-1].sum()
        xs, ys = [], []
        for i, m in enumerate(per.tolist()):
            xs.append(self.means[i] + self.stds[i] * torch.randn(m, self.dim, generator=generator, dtype=torch.float64))
            ys.append(torch.full((m,), i, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    def mode_mass(self, samples: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
        """(n,) fraction of ``samples`` within ``radius`` standard deviations of each mode."""
        dist = torch.cdist(samples.to(torch.float64), self.means)  # (B, n)
        return (dist <= radius * self.stds[None]).double().mean(dim=0)

    def between_mass(self, samples: torch.Tensor, radius: float = 3.0) -> float:
        """Fraction of ``samples`` near no mode (the hybrids of naive composition)."""
        dist = torch.cdist(samples.to(torch.float64), self.means)
        return float((~(dist <= radius * self.stds[None]).any(dim=1)).double().mean())


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float] = (0.5, 1.0, 2.0)) -> float:
    """Biased squared MMD with a sum of RBF kernels (for comparing sample sets)."""
    a, b = a.to(torch.float64), b.to(torch.float64)

    def k(x, y):
        d2 = torch.cdist(x, y) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


__all__ += ["mmd_rbf"]
