"""Conditions for attribution: the vector the decoder saw with each record (training) or query (generation).

The bundled decoder is conditioned on an aggregate of unit CLIP embeddings (``pipeline.train.decoder``): in training,
the mean of a record's k nearest other records' embeddings; at generation, the (noisy) DP aggregate of the
retrieved neighbours. When the exact condition of a query is not at hand (a PNG on disk), its own embedding is the
natural proxy: the aggregate it was generated from describes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineInputError


def embed_conditions(images, *, encoder=None, neighbours: int = 0) -> np.ndarray:
    """(N, d) float32 conditions of ``images``.

    Args:
        images: (N, H, W) uint8 arrays or a sequence of PIL images.
        encoder: an ``index.Encoder`` (None = the bundled tiny CLIP, the bundled decoder's encoder).
        neighbours: 0 = each image's own unit embedding; k > 0 = the mean of the unit embeddings of its k nearest
            other images in the same batch (the decoder's training condition).

    Raises:
        PipelineInputError: ``neighbours`` out of range.
    """
    from PIL import Image

    from index import load_encoder

    enc = encoder if encoder is not None else load_encoder(num_threads=1)
    pils = list(images) if isinstance(images, Sequence) and images and isinstance(images[0], Image.Image) else [
        Image.fromarray(np.asarray(im, dtype=np.uint8), mode="L") for im in np.asarray(images)]
    emb = enc.encode_images(pils)
    if neighbours == 0:
        return emb
    if not 0 < neighbours < len(emb):
        raise PipelineInputError(f"neighbours must be in [0, {len(emb) - 1}]; found {neighbours}")
    from pipeline.train.decoder import neighbour_means

    return np.ascontiguousarray(neighbour_means(emb, neighbours)[:, neighbours - 1], dtype=np.float32)
