"""The public coarse quantiser for ``ivf-flat``: trained only on embeddings the user declares public.

Training an IVF quantiser on the private corpus would publish un-noised private centroids and make one
record move other records' list assignment, breaking the 2/k sensitivity (see :mod:`index.safety`). The
quantiser is trained once per index, stored as ``quantizer.faiss`` (an empty trained ``IndexIVFFlat``) and
cloned into every shard; the manifest records ``public:<sha256 of the .npy file>``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from index.errors import IndexInputError
from index.fs import expand_user

if TYPE_CHECKING:
    import faiss


@dataclass(frozen=True)
class PublicQuantizer:
    """A trained, empty IVF-Flat index plus its provenance."""

    index: faiss.Index
    provenance: str
    nlist: int
    nprobe: int
    public_rows: int

    def to_dict(self) -> dict[str, object]:
        """Manifest form (the trained index itself is a separate file)."""
        return {
            "provenance": self.provenance,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "public_rows": self.public_rows,
        }


def train_public_quantizer(path: str | Path, dim: int, *, nlist: int | None = None) -> PublicQuantizer:
    """Train an inner-product IVF-Flat coarse quantiser on public embeddings from a ``.npy`` file.

    Args:
        path: ``(n, dim)`` float array of PUBLIC embeddings from the same encoder; rows are L2-normalised here.
        dim: the encoder's dimension.
        nlist: number of lists (default about sqrt(n), with at least 39 training rows per list).

    Raises:
        IndexInputError: unreadable file, wrong shape or dimension, non-finite values, too few rows.
    """
    import faiss

    file = expand_user(path)
    try:
        raw = file.read_bytes()
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IndexInputError(
            f"--public-train '{path}' is not a readable .npy array ({type(err).__name__}); pass a float (n, d) .npy file"
        ) from err
    if data.ndim != 2 or data.shape[1] != dim or not np.issubdtype(data.dtype, np.floating):
        raise IndexInputError(
            f"--public-train '{path}' must be a float array of shape (n, {dim}) from the index's encoder, found "
            f"{data.dtype} {data.shape}; embed public images with the same encoder"
        )
    rows = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise IndexInputError(f"--public-train '{path}' contains NaN or infinite values; clean the array")
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    lists = nlist if nlist is not None else max(1, min(round(math.sqrt(len(rows))), len(rows) // 39))
    if lists < 1 or len(rows) < lists:
        raise IndexInputError(
            f"--public-train '{path}' has {len(rows)} rows, fewer than the {lists} lists; add public rows"
        )
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = 1234  # deterministic k-means on the public data
    ivf.train(rows)
    ivf.own_fields = True
    quantizer.this.disown()
    provenance = "public:" + hashlib.sha256(raw).hexdigest()
    return PublicQuantizer(ivf, provenance, lists, max(1, lists // 4), len(rows))
