"""The decoder seam: anything that turns (already private) aggregated embeddings into images.

A decoder only ever sees the output of the DP mechanism (the noisy aggregate), so everything it does is
post-processing: it may be seeded freely and costs no privacy budget.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from pipeline.errors import PipelineInputError


@runtime_checkable
class Decoder(Protocol):
    """Generates images from conditions of shape (B, embedding_dim)."""

    @property
    def embedding_dim(self) -> int:
        """Width of the condition vectors this decoder accepts."""
        ...

    def generate(
        self,
        conditions: torch.Tensor,
        *,
        num_images_per_condition: int = 1,
        steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> list[Image.Image]:
        """Return ``B * num_images_per_condition`` images, grouped by condition (condition 0's images first)."""
        ...


def check_generate_args(conditions: torch.Tensor, embedding_dim: int, *, num_images_per_condition: int,
                        steps: int, guidance_scale: float) -> torch.Tensor:
    """Validate the shared ``generate`` arguments and return the conditions as a float (B, d) tensor.

    Raises:
        PipelineInputError: a wrong shape, a non-finite value, or an out-of-range count/step/scale.
    """
    if not isinstance(conditions, torch.Tensor):
        conditions = torch.as_tensor(conditions)
    if conditions.ndim == 1:
        conditions = conditions[None]
    if conditions.ndim != 2 or conditions.shape[1] != embedding_dim or conditions.shape[0] == 0:
        raise PipelineInputError(
            f"conditions must have shape (B, {embedding_dim}); found {tuple(conditions.shape)}; "
            "pass one aggregated embedding per row from the same encoder the decoder was trained with"
        )
    if not torch.isfinite(conditions).all():
        raise PipelineInputError("conditions contain NaN or inf; pass finite embeddings")
    if num_images_per_condition < 1:
        raise PipelineInputError(f"num_images_per_condition must be >= 1; found {num_images_per_condition}")
    if steps < 1:
        raise PipelineInputError(f"steps must be >= 1; found {steps}")
    if guidance_scale < 0:
        raise PipelineInputError(f"guidance_scale must be >= 0; found {guidance_scale}")
    return conditions.float()
