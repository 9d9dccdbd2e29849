"""Honesty about the bundled models: say when a corpus or a query is far from what they were trained on.

The bundled encoder and decoder were trained on MNIST digits only: whatever the corpus, they draw 16×16 digits.
Two one-line warnings point users with other data to README "Using real models":

* ``index build`` (the corpus owner's command) measures the new shard against the bundled PUBLIC digits: the
  fraction of its images whose best cosine to a public digit falls below the public set's own 1 % quantile
  (leave-one-out). Measured with the bundled encoder: MNIST's private half 0.10, UCI optical digits 1.00 (0.95
  framed as MNIST), image gradients 1.00; "far" means above 0.5. This reads private embeddings, so it is printed
  only to the owner at build time and never stored or shown to anyone who queries.
* ``generate`` looks only at the PUBLIC query: a text prompt whose best cosine to the bundled caption templates is
  below 0.93 (digit prompts ≥ 0.95, "a photo of a face" 0.85), or an image query that is itself far from the
  public digits. No private record is read for it.

Both checks apply only when the index uses the bundled encoder (they are meaningless in another embedding space).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from index import Encoder

__all__ = ["FAR_FRACTION", "PROMPT_THRESHOLD", "corpus_far_fraction", "query_is_far", "uses_bundled_encoder"]

_DATA = Path(__file__).resolve().parent / "data"
#: A shard is "far" when more than this fraction of its images lie below the public 1 % quantile.
FAR_FRACTION = 0.5
#: A text prompt is "far" when its best cosine to the bundled caption templates is below this.
PROMPT_THRESHOLD = 0.93
HINT = "see README 'Using real models' (an open_clip encoder and a diffusers decoder for real images)"


@lru_cache(maxsize=1)
def _public() -> tuple[np.ndarray, float, str]:
    """(public unit embeddings, their leave-one-out 1 % quantile of best cosine, encoder sha256)."""
    embeddings = np.load(_DATA / "public_embeddings.npy").astype(np.float32)
    meta = json.loads((_DATA / "public_embeddings.json").read_text())
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -1.0)
    return embeddings, float(np.quantile(similarity.max(axis=1), 0.01)), str(meta["encoder_sha256"])


def uses_bundled_encoder(encoder_sha256: str) -> bool:
    """Whether an index's encoder is the bundled one the public embeddings were computed with."""
    return encoder_sha256 == _public()[2]


def corpus_far_fraction(embeddings: np.ndarray) -> float:
    """Fraction of ``embeddings`` (unit rows) whose best cosine to a public digit is below the public 1 % quantile."""
    public, cut, _ = _public()
    rows = np.asarray(embeddings, dtype=np.float32)
    if rows.size == 0:
        return 0.0
    best = np.concatenate([(chunk @ public.T).max(axis=1) for chunk in np.array_split(rows, max(1, len(rows) // 4096))])
    return float((best < cut).mean())


def query_is_far(encoder: Encoder, *, prompt: str | None = None, image=None) -> bool:
    """Whether a PUBLIC query is far from what the bundled models know (text: caption templates; image: digits)."""
    if prompt is not None:
        from pipeline.data import DIGIT_WORDS, captions_for

        captions = encoder.encode_text([c for label in range(len(DIGIT_WORDS)) for c in captions_for(label)])
        query = encoder.encode_text([prompt])[0]
        return float((np.asarray(captions) @ np.asarray(query)).max()) < PROMPT_THRESHOLD
    return corpus_far_fraction(encoder.encode_images([image])) > FAR_FRACTION
