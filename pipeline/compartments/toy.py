"""Small ε-MLP denoisers on flat data (sklearn digits, Gaussian shards): CDM's tiny-scale protocol (tests, bench).

Not the product path (that is adapters on the tiny decoder): these make the composition's effect measurable
in seconds on a CPU, with one model per shard, a paragon on the pooled data, DDPM sampling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["EpsMLP", "load_digits_shards", "train_eps"]


class EpsMLP(nn.Module):
    """ε(x_t, t) for flat x (d,): MLP on [x, sin/cos(2^k π t / T)]."""

    def __init__(self, dim: int, num_timesteps: int, hidden: int = 256, time_features: int = 8) -> None:
        super().__init__()
        self.num_timesteps, self.time_features = num_timesteps, time_features
        self.net = nn.Sequential(nn.Linear(dim + 2 * time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.to(torch.float32)[:, None] / float(self.num_timesteps)
        freqs = torch.pow(2.0, torch.arange(self.time_features, dtype=torch.float32))[None] * math.pi
        feats = torch.cat([torch.sin(s * freqs), torch.cos(s * freqs)], dim=1)
        return self.net(torch.cat([x.to(torch.float32), feats], dim=1))


def train_eps(data: torch.Tensor, alphas_cumprod: torch.Tensor, *, steps: int = 2000, batch_size: int = 128,
              lr: float = 2e-3, hidden: int = 256, seed: int = 0) -> EpsMLP:
    """Train an :class:`EpsMLP` on ``data`` (N, d) with the standard ε-prediction loss (non-private)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EpsMLP(data.shape[1], len(alphas_cumprod), hidden)
    abar = alphas_cumprod.to(torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = data.to(torch.float32)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, len(abar), (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t][:, None]
        loss = nn.functional.mse_loss(model(torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.requires_grad_(False).eval()


def load_digits_shards():
    """sklearn's 8x8 digits scaled to [-1, 1] as (x (1797, 64) float32, labels (1797,) int64)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
    return x, torch.as_tensor(digits.target, dtype=torch.long)
