"""``--engine ray``: the encoder stage of a build on Ray Data (``map_batches`` over a pool of encoder actors).

Only the encoding moves: the reader, skip report, dedupe, reuse of checkpointed or existing embeddings,
per-batch checkpoints and the commit stay in the building process (:mod:`index.ingest`, :mod:`index.build`), so
ids, metadata, the skipped report and resumability are the local build's. Each actor loads the index's encoder
from local files (its sha256 must equal the builder's) and runs the same ``preprocess`` → ``encode_pixels`` on
the RGB images it is sent; rows come back as unit float32 rows, checkpointed as each batch arrives.

Limit: the images that need encoding are shipped from the building process (as uint8 arrays in Ray's object
store, which spills to disk); reading the source itself is not distributed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from index.encoder import Encoder, load_encoder
from index.errors import IndexInputError

__all__ = ["RAY_INSTALL_HINT", "EncodeActor", "ray_encode_batches", "require_ray"]

RAY_INSTALL_HINT = "--engine ray needs Ray, which is not installed; install it with: pip install 'dprdm[scale]'"


def require_ray():
    """The ``ray`` module (with Ray Data), or a one-line IndexInputError (exit 2) saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise IndexInputError(RAY_INSTALL_HINT) from None
    return ray


class EncodeActor:
    """One encoder actor of the pool: loads the encoder once, encodes numpy batches ``{id, image}``."""

    def __init__(self, model: str | None, pretrained: str | None, sha256: str, num_threads: int | None) -> None:
        self.encoder = load_encoder(model, pretrained, num_threads=num_threads)
        if self.encoder.sha256 != sha256:
            raise IndexInputError(
                "a Ray worker loaded another encoder than the builder's (different weights on that node); "
                "give every node the same model files"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from PIL import Image

        pixels = torch.stack(
            [self.encoder.preprocess(Image.fromarray(np.asarray(a, dtype=np.uint8), mode="RGB")) for a in batch["image"]]
        )
        return {"id": np.asarray(batch["id"], dtype=np.int64), "embedding": self.encoder.encode_pixels(pixels)}


def ray_encode_batches(
    encoder: Encoder,
    *,
    batch_size: int,
    workers: int = 1,
    address: str | None = None,
    num_threads: int | None = None,
):
    """An ``encode_batches`` engine for :func:`index.ingest.ingest` that encodes on Ray Data with ``workers`` actors.

    Raises:
        IndexInputError: Ray is not installed (one line: how to install it), or ``workers < 1``.
    """
    ray = require_ray()
    if workers < 1:
        raise IndexInputError(f"--workers must be >= 1, found {workers}; pass a positive number of encoder actors")
    spec = encoder.spec

    def run(items: Iterable[tuple[int, Any]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = [{"id": int(i), "image": np.asarray(image.convert("RGB"), dtype=np.uint8)} for i, image in items]
        if not rows:
            return
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        dataset = ray.data.from_items(rows).map_batches(
            EncodeActor,
            fn_constructor_args=(spec.model, spec.pretrained, encoder.sha256, num_threads),
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=workers,
            num_cpus=1,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield batch["id"], np.asarray(batch["embedding"], dtype=np.float32)

    return run
