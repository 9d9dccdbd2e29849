"""``StableUnCLIPDecoder``: Stable unCLIP (diffusers ``StableUnCLIPImg2ImgPipeline``) behind the Decoder seam.

Stable unCLIP 2.1 (``stabilityai/stable-diffusion-2-1-unclip``) is conditioned on the *unnormalised* pooled image
embedding of OpenCLIP ViT-H-14 (``laion2b_s32b_b79k``, 1024-d), so dprdm must index with that same encoder
(``dprdm index build --model ViT-H-14 --pretrained /path/open_clip_pytorch_model.bin``). The DP mechanism runs on
unit embeddings (sensitivity 2/k); this class then post-processes the noisy aggregate: it rescales each row to the
decoder's typical embedding norm and passes it as ``image_embeds`` with a ``noise_level`` (the pipeline's own
embedding-noise augmentation, shared/notes/dp-rdm.md §5). Nothing here touches private data, so it costs no budget.
Weights are loaded from a local folder only (``local_files_only=True``), never downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from pipeline.decoders.base import check_generate_args
from pipeline.errors import PipelineInputError


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Turn off diffusers' and transformers' loading progress bars for the block, then restore them.

    Loading is not a long job worth a bar, and those bars would break the CLI's one-line stderr rule.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in restore:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def normalizer_embedding_norm(pipe) -> float:
    """Typical raw embedding norm from the pipeline's learned normaliser: sqrt(Σ mean² + std²) = sqrt(E‖x‖²).

    A data-free default; pass ``embedding_norm`` (or public images to :func:`estimate_embedding_norm`) to override.
    """
    normalizer = pipe.image_normalizer
    return float(torch.sqrt((normalizer.mean.detach() ** 2 + normalizer.std.detach() ** 2).sum()))


@torch.no_grad()
def estimate_embedding_norm(pipe, public_images: list[Image.Image]) -> float:
    """Mean L2 norm of the pipeline's image-encoder embeddings over PUBLIC images (never private ones)."""
    pixels = pipe.feature_extractor(images=public_images, return_tensors="pt").pixel_values
    param = next(pipe.image_encoder.parameters())
    embeds = pipe.image_encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds
    return float(embeds.norm(dim=-1).mean())


class StableUnCLIPDecoder:
    """Generate with Stable unCLIP from aggregated unit embeddings.

    Args:
        pipe: a ``StableUnCLIPImg2ImgPipeline`` (components already built or loaded).
        embedding_norm: target norm the unit-sphere aggregate is rescaled to; None = estimated from the
            pipeline's image normaliser (:func:`normalizer_embedding_norm`).
        noise_level: Stable unCLIP's embedding noise level in [0, 999] (more = looser adherence to the embedding).
        prompt: optional public text prompt that goes with every condition.
        height: output height in pixels (None = the pipeline default).
        width: output width in pixels (None = the pipeline default).
    """

    def __init__(self, pipe, *, embedding_norm: float | None = None, noise_level: int = 0, prompt: str = "",
                 height: int | None = None, width: int | None = None) -> None:
        if not 0 <= noise_level <= 999:
            raise PipelineInputError(f"noise_level must be in [0, 999]; found {noise_level}")
        if embedding_norm is not None and not embedding_norm > 0:
            raise PipelineInputError(f"embedding_norm must be > 0; found {embedding_norm}")
        self.pipe = pipe
        self.embedding_norm = float(embedding_norm) if embedding_norm is not None else normalizer_embedding_norm(pipe)
        self.noise_level = int(noise_level)
        self.prompt = prompt
        self.height = height
        self.width = width

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, *, embedding_norm: float | None = None,
                        public_images: list[Image.Image] | None = None, noise_level: int = 0, prompt: str = "",
                        height: int | None = None, width: int | None = None) -> StableUnCLIPDecoder:
        """Load a ``StableUnCLIPImg2ImgPipeline`` saved with ``save_pretrained`` from ``local_dir`` (no download).

        Args:
            local_dir: folder with ``model_index.json`` and the pipeline's component folders.
            embedding_norm: target norm; wins over ``public_images``.
            public_images: PUBLIC images to estimate the norm from when ``embedding_norm`` is None.
            noise_level, prompt, height, width: see the class.

        Raises:
            PipelineInputError: the folder is missing or is not a saved diffusers pipeline.
        """
        from diffusers import StableUnCLIPImg2ImgPipeline

        folder = Path(local_dir)
        if not (folder / "model_index.json").is_file():
            raise PipelineInputError(
                f"{folder} is not a saved diffusers pipeline (no model_index.json); download "
                "stabilityai/stable-diffusion-2-1-unclip once elsewhere and pass its local folder"
            )
        # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, minus its stderr warning
        with _quiet_loading():
            pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
                folder, local_files_only=True, low_cpu_mem_usage=False
            )
        pipe.set_progress_bar_config(disable=True)
        if embedding_norm is None and public_images:
            embedding_norm = estimate_embedding_norm(pipe, public_images)
        return cls(pipe, embedding_norm=embedding_norm, noise_level=noise_level, prompt=prompt,
                   height=height, width=width)

    @property
    def embedding_dim(self) -> int:
        """Width of the image embeddings the pipeline expects (1024 for ViT-H-14 Stable unCLIP 2.1)."""
        return int(self.pipe.image_normalizer.mean.shape[-1])

    def rescale(self, conditions: torch.Tensor) -> torch.Tensor:
        """Map each (noisy) unit-sphere aggregate to the decoder's embedding norm; zero rows stay zero."""
        norms = conditions.norm(dim=-1, keepdim=True)
        return torch.where(norms > 0, conditions / norms.clamp_min(1e-12) * self.embedding_norm, conditions)

    @torch.no_grad()
    def generate(
        self,
        conditions: torch.Tensor,
        *,
        num_images_per_condition: int = 1,
        steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> list[Image.Image]:
        """Run Stable unCLIP once per batch with ``image_embeds`` = the rescaled conditions.

        Args:
            conditions: (B, embedding_dim) aggregated (already privatised) unit-sphere embeddings.
            num_images_per_condition: images per row; output is grouped by row.
            steps: denoising steps.
            guidance_scale: classifier-free guidance scale (the negative branch is the zero embedding).
            generator: torch generator (free to seed: post-processing).

        Returns:
            ``B * num_images_per_condition`` RGB PIL images.

        Raises:
            PipelineInputError: bad shapes or arguments.
        """
        cond = check_generate_args(conditions, self.embedding_dim, num_images_per_condition=num_images_per_condition,
                                   steps=steps, guidance_scale=guidance_scale)
        param = next(self.pipe.unet.parameters())
        embeds = self.rescale(cond).to(device=param.device, dtype=param.dtype)
        out = self.pipe(
            prompt=[self.prompt] * len(embeds),
            image_embeds=embeds,
            noise_level=self.noise_level,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_condition,
            generator=generator,
            height=self.height,
            width=self.width,
            output_type="pil",
        )
        return list(out.images)
