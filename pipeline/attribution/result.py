"""``attribute``: the top training records of each query, as a result object, JSON and a PNG strip.

The output names training records (ids, sources, pixels in the strip): an owner's tool, never a DP release.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.attribution.cache import _atomic_write
from pipeline.attribution.features import Features, base_method, featurize
from pipeline.attribution.kernel import Attributor
from pipeline.attribution.model import AttributionModel, RecordSet
from pipeline.errors import PipelineInputError


@dataclass(frozen=True)
class RecordScore:
    """One attributed training record."""

    rank: int
    id: int
    source: str
    score: float
    position: int  # row in the training set

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "source": self.source, "score": self.score}


@dataclass
class AttributionResult:
    """Top records of every query, and how they were computed.

    Attributes:
        method, timesteps, projection_dim, lambda_, seed, model_hash: the attribution settings.
        n_train: N.
        queries: a name per query (its source, else its id).
        top: per query, the top records, best first.
        scores: (Q, N) all scores (not in :meth:`to_dict`).
    """

    method: str
    timesteps: int
    projection_dim: int
    lambda_: float
    seed: int
    model_hash: str
    n_train: int
    queries: list[str]
    top: list[list[RecordScore]]
    scores: np.ndarray = field(repr=False)
    query_images: torch.Tensor = field(repr=False)
    train_images: torch.Tensor = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """What ``dprdm attribute --json`` prints."""
        return {"method": self.method, "timesteps": self.timesteps, "projection_dim": self.projection_dim,
                "lambda": self.lambda_, "seed": self.seed, "model_hash": self.model_hash, "n_train": self.n_train,
                "seconds": round(self.seconds, 3),
                "queries": [{"query": q, "top": [r.to_dict() for r in rows]}
                            for q, rows in zip(self.queries, self.top, strict=True)]}


def attribute(model: AttributionModel, queries: RecordSet, train_set: RecordSet, *, method: str = "das",
              timesteps: int = 100, projection_dim: int = 2048, lambda_: float | None = None, top: int = 10,
              seed: int = 0, cache=None, train_features: Features | None = None) -> AttributionResult:
    """Attribute each query to the training records of ``model``.

    Args:
        model: the model that generated (or would denoise) the queries.
        queries: query images with the conditions they were generated with.
        train_set: the model's training records (images, conditions, ids, sources).
        method: one of ``METHODS``.
        timesteps: K.
        projection_dim: P.
        lambda_: ridge λ; None = ``default_lambda`` (0.1 × mean ‖φ_i‖²); prefer the held-out λ of an LDS run.
        top: records per query.
        seed: feature noise and projection seed.
        cache: a ``FeatureCache`` for ``model`` (training features computed once per method, K, P, seed).
        train_features: precomputed training features (skips featurizing the training set).

    Returns:
        An :class:`AttributionResult`.
    """
    import time

    start = time.perf_counter()
    if top < 1:
        raise PipelineInputError(f"top must be >= 1; found {top}")
    if train_features is None:
        train_features = featurize(model, train_set, method=method, timesteps=timesteps,
                                   projection_dim=projection_dim, seed=seed, cache=cache)
    elif base_method(train_features.method) != base_method(method):
        raise PipelineInputError(f"train_features are {train_features.method}; method is {method}")
    train_features = train_features.as_method(method)
    if len(train_features) != len(train_set) or not np.array_equal(train_features.ids, train_set.ids):
        raise PipelineInputError("train_features do not match train_set (ids differ); featurize the same records")
    query_features = featurize(model, queries, method=method, timesteps=train_features.timesteps,
                               projection_dim=train_features.projection_dim, seed=train_features.seed,
                               role="query")
    attributor = Attributor(train_features, lambda_=lambda_)
    scores = attributor.scores(query_features)
    k = min(top, scores.shape[1])
    tops = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:k]
        tops.append([RecordScore(rank=r + 1, id=int(train_set.ids[i]), source=train_set.source_of(int(i)),
                                 score=float(row[i]), position=int(i)) for r, i in enumerate(best)])
    names = [queries.sources[j] if queries.sources is not None else str(int(queries.ids[j]))
             for j in range(len(queries))]
    return AttributionResult(method=method, timesteps=train_features.timesteps,
                             projection_dim=train_features.projection_dim, lambda_=attributor.lambda_,
                             seed=train_features.seed, model_hash=model.model_hash, n_train=len(train_set),
                             queries=names, top=tops, scores=scores, query_images=queries.images,
                             train_images=train_set.images, seconds=time.perf_counter() - start)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    x = img.detach().float()
    x = x.mean(0) if x.ndim == 3 else x
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_strip(result: AttributionResult, path: str | os.PathLike, *, scale: int = 4, gap: int = 4) -> Path:
    """Write a PNG: one row per query, the query on the left, then its top records, best first.

    The file shows training records, so it is written owner-only (0600), atomically.
    """
    from PIL import Image

    side = int(result.query_images.shape[-1]) * scale
    cols = 1 + max(len(t) for t in result.top)
    width = cols * side + (cols - 1) * gap + 3 * gap
    height = len(result.top) * side + (len(result.top) - 1) * gap
    canvas = Image.new("L", (width, height), color=255)
    for q, rows in enumerate(result.top):
        y = q * (side + gap)
        tiles = [result.query_images[q]] + [result.train_images[r.position] for r in rows]
        for c, tile in enumerate(tiles):
            x = c * (side + gap) + (3 * gap if c > 0 else 0)
            im = Image.fromarray(_to_uint8(tile), mode="L").resize((side, side), Image.NEAREST)
            canvas.paste(im, (x, y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    _atomic_write(out, buf.getvalue())
    return out


__all__ = ["AttributionResult", "RecordScore", "attribute", "save_strip"]
