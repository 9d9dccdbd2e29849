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

from pathlib import Path

import torch
from PIL import Image

from pipeline.decoders._diffusers import DiffusersDecoder, load_pipeline
from pipeline.decoders.base import EmbeddingScaling, mean_embedding_norm
from pipeline.errors import PipelineInputError


def normalizer_embedding_norm(pipe) -> float:
    """Typical raw embedding norm from the pipeline's learned normaliser: sqrt(Σ mean² + std²) = sqrt(E‖x‖²).

    A data-free default; pass ``embedding_norm`` (or public images to :func:`estimate_embedding_norm`) to override.
    """
    normalizer = pipe.image_normalizer
    return float(torch.sqrt((normalizer.mean.detach().float() ** 2 + normalizer.std.detach().float() ** 2).sum()))


@torch.no_grad()
def estimate_embedding_norm(pipe, public_images: list[Image.Image]) -> float:
    """Mean L2 norm of the pipeline's image-encoder embeddings over PUBLIC images (never private ones)."""
    pixels = pipe.feature_extractor(images=public_images, return_tensors="pt").pixel_values
    param = next(pipe.image_encoder.parameters())
    embeds = pipe.image_encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds
    return float(embeds.float().norm(dim=-1).mean())


class StableUnCLIPDecoder(DiffusersDecoder):
    """Generate with Stable unCLIP from aggregated unit embeddings.

    Args:
        pipe: a ``StableUnCLIPImg2ImgPipeline`` (components already built or loaded).
        embedding_norm: target norm of the rescaled aggregate; None = from the pipeline's image normaliser
            (:func:`normalizer_embedding_norm`).
        embedding_scaling: how the unit aggregate is mapped to that norm (``"normalize"``, ``"multiply"``,
            ``"none"``; :class:`~pipeline.decoders.base.EmbeddingScaling`).
        noise_level: Stable unCLIP's embedding noise level in [0, 999] (more = looser adherence to the embedding).
        prompt: optional public text prompt that goes with every condition.
        num_inference_steps: steps when ``generate(steps=None)``; default 20 (the pipeline's default).
        height, width: output size in pixels (None = the pipeline default, UNet sample size × VAE factor).
    """

    family = "stable-unclip"
    default_steps = 20

    def __init__(self, pipe, *, embedding_norm: float | None = None,
                 embedding_scaling: EmbeddingScaling | str = EmbeddingScaling.NORMALIZE, noise_level: int = 0,
                 prompt: str = "", num_inference_steps: int | None = None, height: int | None = None,
                 width: int | None = None) -> None:
        if not 0 <= noise_level <= 999:
            raise PipelineInputError(f"noise_level must be in [0, 999]; found {noise_level}")
        norm = normalizer_embedding_norm(pipe) if embedding_norm is None else embedding_norm
        super().__init__(pipe, embedding_norm=norm, embedding_scaling=embedding_scaling,
                         num_inference_steps=num_inference_steps, height=height, width=width)
        self.noise_level = int(noise_level)
        self.prompt = prompt

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, *, embedding_norm: float | None = None,
                        public_images: list[Image.Image] | None = None, public_embeddings=None,
                        embedding_scaling: EmbeddingScaling | str = EmbeddingScaling.NORMALIZE,
                        noise_level: int = 0, prompt: str = "", num_inference_steps: int | None = None,
                        height: int | None = None, width: int | None = None,
                        torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                        device: str | torch.device | None = None) -> StableUnCLIPDecoder:
        """Load a ``StableUnCLIPImg2ImgPipeline`` saved with ``save_pretrained`` from ``local_dir`` (no download).

        Args:
            local_dir: folder with ``model_index.json`` and the pipeline's component folders.
            embedding_norm: target norm; wins over the public estimates.
            public_images: PUBLIC images whose mean embedding norm (this pipeline's image encoder) is the target.
            public_embeddings: raw (unnormalised) ViT embeddings of PUBLIC images, (n, d) or a .npy path; their
                mean norm is the target when neither ``embedding_norm`` nor ``public_images`` is given.
            embedding_scaling, noise_level, prompt, num_inference_steps, height, width: see the class.
            torch_dtype: weights dtype ('float16' halves memory; GPU only in practice).
            variant: weight file variant to read (e.g. 'fp16' for ``*.fp16.safetensors``).
            device: where to move the pipeline after loading (e.g. 'cuda').

        Raises:
            PipelineInputError: the folder is not a Stable unCLIP img2img pipeline, or a knob is out of range.
        """
        from diffusers import StableUnCLIPImg2ImgPipeline

        from pipeline.decoders.loading import DecoderFamily, describe_decoder

        info = describe_decoder(local_dir, expect=DecoderFamily.STABLE_UNCLIP)
        pipe = load_pipeline(StableUnCLIPImg2ImgPipeline, info.folder, torch_dtype=torch_dtype, variant=variant,
                             device=device)
        if embedding_norm is None and public_images:
            embedding_norm = estimate_embedding_norm(pipe, public_images)
        elif embedding_norm is None and public_embeddings is not None:
            embedding_norm = mean_embedding_norm(public_embeddings, info.condition_dim)
        decoder = cls(pipe, embedding_norm=embedding_norm, embedding_scaling=embedding_scaling,
                      noise_level=noise_level, prompt=prompt, num_inference_steps=num_inference_steps,
                      height=height, width=width)
        decoder._set_source(info.folder, variant=variant)
        return decoder

    @property
    def condition_dim(self) -> int:
        """Width of the image embeddings the pipeline expects (1024 for ViT-H-14 Stable unCLIP 2.1)."""
        return int(self.pipe.image_normalizer.mean.shape[-1])

    def _run(self, embeds: torch.Tensor, *, steps: int, guidance_scale: float, generator) -> list[Image.Image]:
        """One pipeline call: ``image_embeds`` noised at ``noise_level`` (the pipeline's augmentation), CFG against
        the zero embedding and the empty prompt when ``guidance_scale > 1``."""
        out = self.pipe(
            prompt=[self.prompt] * len(embeds),
            image_embeds=embeds,
            noise_level=self.noise_level,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            height=self.height,
            width=self.width,
            output_type="pil",
        )
        return list(out.images)
