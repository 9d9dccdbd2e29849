"""The linear-datamodel kernel: τ(z)_i = φ(z)ᵀ (ΦᵀΦ + λI)⁻¹ φ(x_i), primal or dual.

With Φ ∈ R^{N×P}, (ΦᵀΦ + λI)⁻¹Φᵀ = Φᵀ(ΦΦᵀ + λI)⁻¹ (push-through identity), so the scores of a query batch are
φ_q Φᵀ (ΦΦᵀ + λI)⁻¹: an N×N system instead of P×P when N < P (the dual form). Both forms go through one
eigendecomposition, which also makes a λ sweep (LDS) cost one decomposition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.attribution.features import Features, base_method
from pipeline.errors import PipelineInputError


def _check_pair(train: Features, query: Features) -> None:
    if query.projection_dim != train.projection_dim or query.phi.shape[1] != train.phi.shape[1]:
        raise PipelineInputError(f"query features have P={query.projection_dim}, training features "
                                 f"P={train.projection_dim}; featurize both with the same P and seed")
    if base_method(query.method) != base_method(train.method) or query.timesteps != train.timesteps:
        raise PipelineInputError(f"query features are {query.method}/K={query.timesteps}, training features "
                                 f"{train.method}/K={train.timesteps}; featurize both the same way")
    if query.model_hash != train.model_hash or query.seed != train.seed:
        raise PipelineInputError("query and training features come from different models or projection seeds")


def kernel_scores(train_phi: np.ndarray, query_phi: np.ndarray, lambdas: Sequence[float], *,
                  form: str = "auto") -> np.ndarray:
    """Raw scores φ_q (ΦᵀΦ + λI)⁻¹ Φᵀ for every λ: an (L, Q, N) float64 array.

    Args:
        train_phi: Φ, (N, P).
        query_phi: (Q, P).
        lambdas: ridge values λ > 0.
        form: ``"dual"`` (N×N system), ``"primal"`` (P×P) or ``"auto"`` (dual when N < P).
    """
    phi = np.asarray(train_phi, dtype=np.float64)
    q = np.asarray(query_phi, dtype=np.float64)
    lam = np.asarray(lambdas, dtype=np.float64)
    if np.any(lam <= 0):
        raise PipelineInputError(f"lambda must be > 0; found {lam.min()}")
    n, p = phi.shape
    if form == "auto":
        form = "dual" if n < p else "primal"
    if form == "dual":
        s, u = np.linalg.eigh(phi @ phi.T)
        left, right = (q @ phi.T) @ u, u  # scores = (q Φᵀ U) diag(1/(s+λ)) Uᵀ
    elif form == "primal":
        s, v = np.linalg.eigh(phi.T @ phi)
        left, right = q @ v, phi @ v  # scores = (q V) diag(1/(s+λ)) (Φ V)ᵀ
    else:
        raise PipelineInputError(f"form must be auto, dual or primal; found {form!r}")
    s = np.clip(s, 0.0, None)
    return np.stack([(left / (s + lm)) @ right.T for lm in lam])


def finish_scores(raw: np.ndarray, method: str, residual: np.ndarray | None) -> np.ndarray:
    """Apply a method's post-processing to raw kernel scores (..., N): DAS × r_i, then squaring if ``-squared``."""
    out = raw
    if base_method(method) == "das" and residual is not None:
        out = out * residual  # broadcast over the training axis (the release's (N,1) broadcast is a bug, §C.1)
    if method.endswith("-squared"):
        out = out**2
    return out


def default_lambda(train: Features) -> float:
    """0.1 × the mean squared row norm of Φ (= 0.1 × trace(ΦΦᵀ)/N): a scale-free default; prefer LDS's λ."""
    return float(0.1 * np.mean(np.sum(np.asarray(train.phi, dtype=np.float64) ** 2, axis=1)))


class Attributor:
    """Scores queries against a training set's features.

    Args:
        train_features: Φ and its metadata (method, K, P, residual).
        lambda_: ridge λ > 0; None = :func:`default_lambda`.
        form: ``"auto"`` (dual when N < P), ``"dual"`` or ``"primal"``.
    """

    def __init__(self, train_features: Features, *, lambda_: float | None = None, form: str = "auto") -> None:
        self.train = train_features
        self.lambda_ = default_lambda(train_features) if lambda_ is None else float(lambda_)
        if not self.lambda_ > 0:
            raise PipelineInputError(f"lambda must be > 0; found {self.lambda_}")
        self.form = form

    @property
    def method(self) -> str:
        return self.train.method

    def raw_scores(self, query_features: Features) -> np.ndarray:
        """φ_q (ΦᵀΦ + λI)⁻¹ Φᵀ, (Q, N), before the method's post-processing."""
        _check_pair(self.train, query_features)
        return kernel_scores(self.train.phi, query_features.phi, [self.lambda_], form=self.form)[0]

    def scores(self, query_features: Features) -> np.ndarray:
        """(Q, N) attribution scores of the method (higher = more influence on the query)."""
        return finish_scores(self.raw_scores(query_features), self.train.method, self.train.residual)
