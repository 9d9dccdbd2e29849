"""``ShardPosterior``: the time-conditioned noisy-sample shard classifier w_i(x, t) ≈ P(shard i | x_t = x).

Training (CDM §3.3): draw (x_0, i) from the POOLED shards with their shard labels — so the empirical class prior
is λ_i ∝ |D_i| —, t ~ U{0..T-1}, ε ~ N(0, I), x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, minimise −log f(x_t, t)_i.
The Bayes-optimal f is exactly the posterior w_i of Proposition 3.1 (prior included).

Privacy (our choice, see the README text): the classifier is a function of EVERY shard's records, so it is trained
with DP-SGD (Opacus: Poisson sampling of every pooled record with rate q = B / N, per-record clipping at C,
Gaussian noise z·C, like ``pipeline.finetune``). Adding or removing one record of shard i changes one clipped
per-record gradient, so for EVERY DP shard's scope the run is the same event
``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)`` (q is a per-record sampling rate, the same for all
shards). :func:`charge_posterior` charges that one event to every participating DP scope in ONE all-or-none
ledger transaction before the first step. Records of shards marked public/consented are pooled too (they carry
no scope). Why not public data only: a classifier trained on public data cannot tell the private shards apart
(the posterior is about the shards' own distributions), so it would reduce CDM to naive averaging.

Architecture: an MLP on the flattened x_t concatenated with sinusoidal features of t / T (Linear and SiLU
only: exact Opacus per-sample gradients in hooks mode).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.errors import PipelineInputError

if TYPE_CHECKING:
    from accountant import Ledger, Receipt

__all__ = ["PosteriorOutcome", "ShardPosterior", "charge_posterior", "posterior_event"]


def _time_features(t: torch.Tensor, num_timesteps: int, count: int) -> torch.Tensor:
    s = t.to(torch.float32)[:, None] / float(num_timesteps)
    freqs = torch.pow(2.0, torch.arange(count, dtype=torch.float32))[None] * math.pi
    return torch.cat([torch.sin(s * freqs), torch.cos(s * freqs)], dim=1)


class _Net(nn.Module):
    def __init__(self, input_dim: int, n: int, hidden: int, time_features: int, num_timesteps: int) -> None:
        super().__init__()
        self.num_timesteps, self.time_features = num_timesteps, time_features
        self.body = nn.Sequential(nn.Linear(input_dim + 2 * time_features, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feats = _time_features(t, self.num_timesteps, self.time_features)
        return self.body(torch.cat([x.reshape(len(x), -1).to(torch.float32), feats], dim=1))


@dataclass(frozen=True, slots=True, kw_only=True)
class PosteriorOutcome:
    """What :meth:`ShardPosterior.fit` did: the DP parameters of the run (the charged event's)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    records: int


def posterior_event(*, sample_rate: float, noise_multiplier: float, steps: int):
    """The classifier training's DP event for every participating DP scope (the DP-SGD event of finetune)."""
    from pipeline.finetune.accounting import training_event

    return training_event(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)


def charge_posterior(ledger: Ledger, records: Mapping[str, int], event, *, caller: str | None = None,
                     purpose: str = "compartments shard classifier") -> Receipt | None:
    """Charge ``event`` to every DP scope in ``records`` (scope -> its current N) in ONE transaction, or to none.

    Returns None when no DP scope participates (every shard public/consented).

    Raises:
        accountant.BudgetExceeded: the event does not fit one of the scopes (nothing charged anywhere).
    """
    from accountant.errors import BudgetExceeded

    scopes = sorted(records)
    if not scopes:
        return None
    if not ledger.fits(scopes, event=event, records=dict(records)):
        raise BudgetExceeded(
            f"the shard classifier's training does not fit the remaining budget of every scope of "
            f"{', '.join(scopes)}; nothing was charged or trained; raise its noise or train fewer steps"
        )
    return ledger.charge(scopes, event=event, records=dict(records), caller=caller, purpose=purpose)


class ShardPosterior:
    """A noisy-sample shard classifier; ``weights(x, t)`` ≈ P(shard i | x_t = x) over ``names``.

    Args:
        names: the shards, in weight-column order.
        sizes: shard name -> |D_i| (the prior the pooled training data carries).
        input_shape: shape of one sample (e.g. (2,) or (1, 16, 16)).
        num_timesteps: T of the forward process (t in 0..T-1).
        hidden: MLP width. time_features: sinusoidal frequencies of t / T.
    """

    FORMAT = "dprdm-shard-posterior"

    def __init__(self, names: Sequence[str], sizes: Mapping[str, int], input_shape: Sequence[int], *,
                 num_timesteps: int, hidden: int = 128, time_features: int = 8) -> None:
        if len(names) < 1 or len(set(names)) != len(names):
            raise PipelineInputError(f"shard names must be distinct and non-empty; found {list(names)}")
        self.names = list(names)
        self.sizes = {n: int(sizes[n]) for n in self.names}
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_timesteps = int(num_timesteps)
        self.hidden, self.time_features = int(hidden), int(time_features)
        self.net = _Net(math.prod(self.input_shape), len(self.names), self.hidden, self.time_features,
                        self.num_timesteps).eval()

    @property
    def config(self) -> dict[str, Any]:
        return {"names": self.names, "sizes": self.sizes, "input_shape": list(self.input_shape),
                "num_timesteps": self.num_timesteps, "hidden": self.hidden, "time_features": self.time_features}

    # -- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def weights(self, x: torch.Tensor, t: torch.Tensor | int, allowed: Sequence[str] | None = None) -> torch.Tensor:
        """(B, n) softmax posterior (or (B, |A|) renormalised over the allowed names, in ``names`` order)."""
        t = torch.as_tensor(t)
        if t.ndim == 0:
            t = t.expand(len(x))
        probs = torch.softmax(self.net(x, t.long()).to(torch.float64), dim=1)
        if allowed is None:
            return probs
        from pipeline.compartments.compose import restrict_weights

        return restrict_weights(probs, [self.names.index(n) for n in self.names if n in set(allowed)])

    __call__ = weights

    # -- training -------------------------------------------------------------------------------------------
    def fit(self, data: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor, *, noise_multiplier: float,
            max_grad_norm: float = 1.0, batch_size: int = 64, steps: int = 500, lr: float = 2e-3,
            _seed: int | None = None) -> PosteriorOutcome:
        """DP-SGD (Opacus) on the pooled records ``data`` (N, *input_shape) with shard labels (N,) in 0..n-1.

        The caller charges :func:`posterior_event` (with ``sample_rate=batch_size / N``) BEFORE calling this.
        ``noise_multiplier=0`` is the non-private reference (tests/benchmark only; never charged as DP).
        ``_seed``: TEST HOOK ONLY (a known seed voids the guarantee).
        """
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        data = torch.as_tensor(data, dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.long)
        n = len(data)
        if tuple(data.shape[1:]) != self.input_shape or labels.shape != (n,):
            raise PipelineInputError(f"classifier data must be (N, {self.input_shape}) with (N,) labels; found "
                                     f"{tuple(data.shape)} and {tuple(labels.shape)}")
        if batch_size > n or n == 0:
            raise PipelineInputError(f"batch size {batch_size} is larger than the {n} pooled records")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0) or max_grad_norm <= 0 or steps < 1:
            raise PipelineInputError("classifier training needs z >= 0, C > 0 and steps >= 1")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        if len(abar) != self.num_timesteps:
            raise PipelineInputError(f"alphas_cumprod has {len(abar)} steps, the classifier {self.num_timesteps}")
        q = batch_size / n
        gens = ([torch.Generator().manual_seed(secrets.randbits(64)) for _ in range(3)] if _seed is None
                else [torch.Generator().manual_seed(_seed + i) for i in range(3)])
        sample_gen, noise_gen, train_gen = gens
        with torch.random.fork_rng(devices=[]):  # initialisation from its own seed, global RNG untouched
            torch.manual_seed(secrets.randbits(63) if _seed is None else _seed + 3)
            net = _Net(math.prod(self.input_shape), len(self.names), self.hidden, self.time_features,
                       self.num_timesteps)
        model = GradSampleModule(net, loss_reduction="mean")
        params = [p for p in net.parameters()]
        optimizer = DPOptimizer(torch.optim.Adam(params, lr=lr), noise_multiplier=float(noise_multiplier),
                                max_grad_norm=float(max_grad_norm), expected_batch_size=batch_size,
                                loss_reduction="mean", generator=noise_gen)
        sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=sample_gen, steps=steps)
        model.train()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for idx in sampler:
                idx = torch.as_tensor(idx, dtype=torch.long)
                if len(idx) == 0:  # empty Poisson batch: a noise-only step
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                else:
                    x0 = data[idx]
                    t = torch.randint(0, self.num_timesteps, (len(idx),), generator=train_gen)
                    eps = torch.randn(x0.shape, generator=train_gen)
                    a = abar[t].reshape(-1, *([1] * (x0.ndim - 1)))
                    xt = torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps
                    nn.functional.cross_entropy(model(xt, t), labels[idx]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        model._close()
        for p in params:
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
        self.net = net.requires_grad_(False).eval()
        return PosteriorOutcome(noise_multiplier=float(noise_multiplier), sample_rate=q, steps=steps,
                                max_grad_norm=float(max_grad_norm), records=n)

    # -- storage --------------------------------------------------------------------------------------------
    def to_bytes(self) -> tuple[bytes, bytes]:
        """(weights safetensors, config JSON) — the config carries the weights' sha256."""
        from safetensors.torch import save

        blob = save({k: v.contiguous() for k, v in sorted(self.net.state_dict().items())})
        config = dict(self.config, format=self.FORMAT, sha256=hashlib.sha256(blob).hexdigest())
        return blob, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, blob: bytes, config_bytes: bytes) -> ShardPosterior:
        """Load; refuses a damaged weights file (checksum) or another format.

        Raises:
            PipelineInputError: damaged or unknown.
        """
        from safetensors.torch import load

        try:
            config = json.loads(config_bytes)
        except ValueError as err:
            raise PipelineInputError("shard classifier config is unreadable; retrain the compartments") from err
        if not isinstance(config, dict) or config.get("format") != cls.FORMAT:
            raise PipelineInputError("not a dprdm shard classifier")
        if hashlib.sha256(blob).hexdigest() != config.get("sha256"):
            raise PipelineInputError("shard classifier file: checksum mismatch; retrain the compartments")
        post = cls(config["names"], config["sizes"], config["input_shape"], num_timesteps=config["num_timesteps"],
                   hidden=config["hidden"], time_features=config["time_features"])
        post.net.load_state_dict(load(blob))
        post.net.requires_grad_(False).eval()
        return post
