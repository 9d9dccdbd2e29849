"""Per-sample gradient features of TRAK, D-TRAK and DAS, projected to P dims by a seeded Gaussian projection.

Gradients are per sample and per timestep with ``torch.func`` (``vmap(grad(...))``) on the K timesteps of D-TRAK's
``uniform`` grid, range(0, T, T // K). The forward noise ε_t of record ``id`` at timestep ``t`` comes from its own
generator, seeded from (role, seed, t, id): it does not depend on which other records are featurized, and it is
decoupled from the LDS ground truth (``pipeline.attribution.lds`` draws from another stream). The K gradients are
averaged (DAS first scales each to unit norm) and only the average is projected: the projection is linear, so this
equals the published Pᵀ(1/K)Σ_t ∇ and costs one projection per record instead of K.

The projection is an explicit seeded Gaussian matrix R ∈ R^{p×P}, entries N(0, 1/P), generated block by block from
(seed, block) so it is never held whole (traker's ``BasicProjector`` is not used; the matrix is the same for every
call with the same seed, on any machine running the same torch version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.attribution.model import AttributionModel, RecordSet
from pipeline.errors import PipelineInputError

BASE_METHODS = ("trak", "dtrak", "das")
METHODS = ("trak", "dtrak", "das", "trak-squared", "dtrak-squared", "das-squared")
_ACC_FLOATS = 48 * 2**20  # per-chunk accumulator budget: 48 Mi floats (192 MB) of averaged gradients


def base_method(method: str) -> str:
    """``das-squared`` → ``das``: the method whose features a (squared) method uses.

    Raises:
        PipelineInputError: an unknown method.
    """
    if method not in METHODS:
        raise PipelineInputError(f"method must be one of {', '.join(METHODS)}; found {method!r}")
    return method.removesuffix("-squared")


def seed_of(*parts) -> int:
    """A 63-bit generator seed from any printable parts (blake2b), so independent streams never collide."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def noise_for(ids: np.ndarray, t: int, shape: tuple[int, ...], *, stream: str, seed: int) -> torch.Tensor:
    """(len(ids), *shape) standard normal noise; row i depends only on (stream, seed, t, ids[i])."""
    out = torch.empty((len(ids), *shape))
    gen = torch.Generator()
    for row, rid in enumerate(ids):
        gen.manual_seed(seed_of(stream, seed, int(t), int(rid)))
        out[row] = torch.randn(shape, generator=gen)
    return out


class GaussianProjector:
    """x ↦ xR with R ∈ R^{dim×P}, R_ij ~ N(0, 1/P) i.i.d., generated in row blocks from (seed, block).

    Args:
        dim: input dimension (number of model parameters).
        projection_dim: P.
        seed: seed of the matrix.
        block_rows: rows generated at once (memory: block_rows × P floats).
    """

    def __init__(self, dim: int, projection_dim: int, *, seed: int = 0, block_rows: int = 4096) -> None:
        if projection_dim < 1 or dim < 1:
            raise PipelineInputError(f"projection_dim and dim must be >= 1; found {projection_dim}, {dim}")
        self.dim, self.projection_dim, self.seed, self.block_rows = dim, projection_dim, seed, block_rows
        self._full: torch.Tensor | None = None
        if dim * projection_dim <= 16 * 2**20:  # small enough (≤ 64 MB) to keep whole
            self._full = torch.cat([self._block(b) for b in range(self._num_blocks())])

    def _num_blocks(self) -> int:
        return math.ceil(self.dim / self.block_rows)

    def _block(self, b: int) -> torch.Tensor:
        rows = min(self.block_rows, self.dim - b * self.block_rows)
        gen = torch.Generator().manual_seed(seed_of("projection", self.seed, self.block_rows, b))
        return torch.randn((rows, self.projection_dim), generator=gen).div_(math.sqrt(self.projection_dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(S, dim) → (S, P) float32."""
        x = x.float()
        if self._full is not None:
            return x @ self._full
        out = torch.zeros((len(x), self.projection_dim))
        for b in range(self._num_blocks()):
            lo = b * self.block_rows
            out.addmm_(x[:, lo:lo + self.block_rows], self._block(b))
        return out


@dataclass(frozen=True)
class Features:
    """Projected attribution features of a record set under one model.

    Attributes:
        phi: (N, P) float32, row i = φ(record i).
        method: the attribution method these features serve (``das-squared`` uses ``das`` features).
        timesteps: K.
        projection_dim: P.
        seed: seed of the forward noise and of the projection.
        model_hash: ``AttributionModel.model_hash`` of the model they were computed on.
        ids: (N,) int64 record ids.
        sources: each record's source, or None.
        residual: (N,) DAS's normalised residual r_i (``das`` only), else None.
        seconds: wall time spent computing them (0 when read from the cache).
    """

    phi: np.ndarray
    method: str
    timesteps: int
    projection_dim: int
    seed: int
    model_hash: str
    ids: np.ndarray
    sources: tuple[str, ...] | None = None
    residual: np.ndarray | None = None
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.phi)

    def take(self, positions) -> Features:
        """Rows at ``positions`` (row numbers), in that order."""
        pos = np.asarray(positions, dtype=np.int64)
        return dataclasses.replace(
            self, phi=self.phi[pos], ids=self.ids[pos],
            sources=None if self.sources is None else tuple(self.sources[i] for i in pos),
            residual=None if self.residual is None else self.residual[pos])

    def drop(self, ids) -> Features:
        """A copy without the rows of ``ids`` (ids not present are ignored)."""
        keep = ~np.isin(self.ids, np.asarray(list(ids), dtype=np.int64))
        return self.take(np.flatnonzero(keep))

    def as_method(self, method: str) -> Features:
        """The same features labelled for ``method`` (which must share the base method)."""
        if base_method(method) != base_method(self.method):
            raise PipelineInputError(f"features of {self.method!r} cannot serve {method!r}")
        return dataclasses.replace(self, method=method)


def _item_loss(model: AttributionModel, method: str):
    """The scalar whose per-item gradient is the feature, plus an aux (the item's RMS noise-prediction error)."""

    def f(params, x, t, c, e):
        out = model.eps(model.add_noise(x[None], e[None], t[None]), t[None], c[None], params)
        err = (out - e[None]).pow(2).mean()
        if method == "trak":
            value = err  # the diffusion loss
        elif method == "dtrak":
            value = out.pow(2).mean()  # (1/d)‖ε_θ‖²
        else:
            value = out.mean()  # DAS: (1/d) Σ_j ε_θ,j
        return value, err.detach().sqrt()

    return f


@contextlib.contextmanager
def _vmap_friendly_attention(unet):
    """Swap a diffusers UNet's attention processors for the classic (bmm + softmax) one while featurizing.

    ``vmap`` has no batching rule for ``scaled_dot_product_attention`` on the CPU and falls back to a per-item loop;
    the classic processor computes the same attention (to float rounding, ~1e-7) about 30 % faster under ``vmap``.
    The caller's processors are restored afterwards; models without attention processors are left alone.
    """
    if not hasattr(unet, "set_attn_processor") or not getattr(unet, "attn_processors", None):
        yield
        return
    from diffusers.models.attention_processor import AttnProcessor

    saved = dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor())
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def featurize(model: AttributionModel, records, conditions=None, *, method: str = "das", timesteps: int = 100,
              projection_dim: int = 2048, seed: int = 0, role: str = "train", batch_size: int = 64,
              cache=None) -> Features:
    """Attribution features φ of every record under ``model``.

    Args:
        model: the model being attributed.
        records: a :class:`RecordSet` (images, conditions, ids), or images (uint8 (N, H, W) or float in [-1, 1])
            when ``conditions`` is given (ids are then 0..N-1).
        conditions: (N, d) conditions the model saw the images with, when ``records`` is plain images.
        method: one of :data:`METHODS` (squared methods share their base method's features).
        timesteps: K, the number of timesteps on the uniform grid.
        projection_dim: P.
        seed: seed of the forward noise and of the projection; use the same seed for queries and training records
            (the projection must be shared) and a different one from the LDS ground truth (it is, by stream).
        role: noise stream, ``"train"`` or ``"query"`` (a query that is also a training record gets fresh noise).
        batch_size: (record, timestep) items per vectorised gradient call.
        cache: a :class:`~pipeline.attribution.cache.FeatureCache` for this model, or None; training features
            are read from it when it holds every record, and written to it otherwise.

    Returns:
        :class:`Features` with rows in ``records`` order.

    Raises:
        PipelineInputError: an unknown method, or bad K / P.
    """
    base = base_method(method)
    if not isinstance(records, RecordSet):
        if conditions is None:
            raise PipelineInputError("pass a RecordSet, or images together with their conditions")
        records = RecordSet.from_arrays(records, conditions, image_size=model.image_size)
    if projection_dim < 1:
        raise PipelineInputError(f"projection_dim must be >= 1; found {projection_dim}")
    grid = model.timestep_grid(timesteps)
    if cache is not None and role == "train":
        hit = cache.get(base, timesteps, projection_dim, seed, ids=records.ids)
        if hit is not None:
            return hit.as_method(method)
    start = time.perf_counter()
    params = model.parameters()
    n_params = sum(v.numel() for v in params.values())
    projector = GaussianProjector(n_params, projection_dim, seed=seed)
    per_item = torch.func.vmap(torch.func.grad(_item_loss(model, base), has_aux=True), in_dims=(None, 0, 0, 0, 0))
    n, k = len(records), len(grid)
    shape = tuple(records.images.shape[1:])
    noise = torch.stack([noise_for(records.ids, int(t), shape, stream=f"features-{role}", seed=seed) for t in grid],
                        dim=1)  # (N, K, *shape)
    chunk = max(1, min(n, _ACC_FLOATS // n_params))
    phi = np.empty((n, projection_dim), dtype=np.float32)
    errors = np.empty((n, k), dtype=np.float64)
    with torch.no_grad(), _vmap_friendly_attention(model.unet):
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            acc = torch.zeros((hi - lo, n_params))
            items = [(i, j) for i in range(lo, hi) for j in range(k)]
            for a in range(0, len(items), batch_size):
                part = items[a:a + batch_size]
                rows = torch.tensor([i for i, _ in part])
                cols = torch.tensor([j for _, j in part])
                with torch.enable_grad():
                    grads, err = per_item(params, records.images[rows], grid[cols], records.conditions[rows],
                                          noise[rows, cols])
                g = torch.cat([v.reshape(len(part), -1) for v in grads.values()], dim=1)
                if base == "das":  # per-timestep unit normalisation (DAS release, 03_grad.py)
                    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                acc.index_add_(0, rows - lo, g)
                errors[rows.numpy(), cols.numpy()] = err.double().numpy()
            phi[lo:hi] = projector.project(acc / k).numpy()
    residual = None
    if base == "das":
        # r_i = mean_t(e_{i,t} / ‖e_i‖₂), e_{i,t} the RMS error at t (07_score.py::load_error). The release uses all
        # 1000 t; here the K feature timesteps (r_i is nearly constant across records: notes §C.4, reading 3).
        residual = (errors / np.linalg.norm(errors, axis=1, keepdims=True).clip(1e-30)).mean(axis=1)
    feats = Features(phi=phi, method=base, timesteps=timesteps, projection_dim=projection_dim, seed=seed,
                     model_hash=model.model_hash, ids=records.ids.copy(), sources=records.sources,
                     residual=residual, seconds=time.perf_counter() - start)
    if cache is not None and role == "train":
        cache.put(feats)
    return feats.as_method(method)
