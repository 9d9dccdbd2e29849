"""``TinyDecoder``: the bundled retrieval-conditioned diffusion decoder (a diffusers UNet + DDIM).

The UNet was trained by ``python -m pipeline.train decoder`` on the public half (DP-RDM "adapt" training); it sees
the condition as one cross-attention token and through its class-embedding projection, and the zero vector is the
unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.decoders.base import WeightsIdentity, check_generate_args
from pipeline.errors import PipelineInputError

BUNDLED_DECODER_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-decoder"


class TinyDecoder(WeightsIdentity):
    """A DDIM sampler over a tiny ``UNet2DConditionModel`` conditioned on one aggregated embedding.

    Args:
        unet: the denoiser; ``class_embed_type="projection"`` with input dim = embedding dim, and
            ``cross_attention_dim`` = embedding dim.
        scheduler: any diffusers scheduler; its config is turned into a ``DDIMScheduler`` (as ``DDIMPipeline`` does).
    """

    family = "tiny"

    def __init__(self, unet, scheduler) -> None:
        from diffusers import DDIMScheduler

        self.unet = unet.eval()
        self.scheduler = DDIMScheduler.from_config(scheduler.config)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> TinyDecoder:
        """Load ``unet/`` and ``scheduler/`` saved by ``save_pretrained`` from a local folder (never downloads).

        Args:
            path: the folder; None = the bundled ``pipeline/models/tiny-decoder``.

        Raises:
            PipelineInputError: the folder or one of its parts is missing.
        """
        from diffusers import DDIMScheduler, UNet2DConditionModel

        folder = Path(path) if path is not None else BUNDLED_DECODER_DIR
        for part in ("unet", "scheduler"):
            if not (folder / part).is_dir():
                raise PipelineInputError(
                    f"decoder folder {folder} has no '{part}/' subfolder; pass a folder written by "
                    "'dprdm train decoder' (or TinyDecoder.save_pretrained)"
                )
        # low_cpu_mem_usage=False: without `accelerate` diffusers falls back to it anyway, after printing a
        # multi-line warning on stderr that would break the CLI's one-line-error rule.
        unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", local_files_only=True, low_cpu_mem_usage=False
        )
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        decoder = cls(unet, scheduler)
        decoder._set_source(folder, label="bundled" if folder.resolve() == BUNDLED_DECODER_DIR else None)
        return decoder

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``unet/`` (safetensors) and ``scheduler/`` under ``path``."""
        self.unet.save_pretrained(Path(path) / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(Path(path) / "scheduler")

    def load_adapter(self, path: str | Path) -> TinyDecoder:
        """A new decoder with the DP fine-tuning adapter at ``path`` applied (this one is unchanged).

        Raises:
            PipelineInputError: not an adapter, damaged, or trained for another base decoder.
        """
        from pipeline.finetune import load_adapter

        return load_adapter(self, path)

    @property
    def condition_dim(self) -> int:
        """Width of the condition vectors (the UNet's class-projection input)."""
        return int(self.unet.config.projection_class_embeddings_input_dim)

    @property
    def embedding_dim(self) -> int:
        """Older name of :attr:`condition_dim`."""
        return self.condition_dim

    def _weight_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    @property
    def image_size(self) -> int:
        """Side of the square grayscale images it generates."""
        return int(self.unet.config.sample_size)

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
        """Sample grayscale images for each condition with DDIM (η = 0) and classifier-free guidance.

        Args:
            conditions: (B, d) aggregated (already privatised) embeddings; a zero row means "unconditional".
            num_images_per_condition: images per row; output is grouped by row.
            steps: DDIM steps.
            guidance_scale: CFG scale w in ε_u + w·(ε_c − ε_u); w ≤ 1 skips the unconditional pass (w = 1 is
                plain conditional sampling, w = 0 unconditional).
            generator: torch generator for the initial noise (free to seed: this is post-processing).

        Returns:
            ``B * num_images_per_condition`` PIL images in mode "L".

        Raises:
            PipelineInputError: bad shapes or arguments.
        """
        from diffusers.utils.torch_utils import randn_tensor

        # 1. check inputs and derive the batch from the component config
        cond = check_generate_args(conditions, self.embedding_dim, num_images_per_condition=num_images_per_condition,
                                   steps=steps, guidance_scale=guidance_scale)
        param = next(self.unet.parameters())
        cond = cond.to(device=param.device, dtype=param.dtype).repeat_interleave(num_images_per_condition, dim=0)
        if guidance_scale == 0:
            cond = torch.zeros_like(cond)
        use_cfg = guidance_scale > 1.0
        context = torch.cat([torch.zeros_like(cond), cond]) if use_cfg else cond
        # 2. initial noise from the caller's generator
        shape = (len(cond), self.unet.config.in_channels, self.image_size, self.image_size)
        latents = randn_tensor(shape, generator=generator, device=param.device, dtype=param.dtype)
        # 3. timesteps
        self.scheduler.set_timesteps(steps, device=param.device)
        for t in self.scheduler.timesteps:
            # 4. predict the noise (unconditional and conditional halves in one batch)
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            eps = self.unet(model_in, t, encoder_hidden_states=context[:, None, :], class_labels=context).sample
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            # 5. x_t -> x_t-1
            latents = self.scheduler.step(eps, t, latents, eta=0.0, generator=generator).prev_sample
        # 6. post-process to uint8 grayscale images
        pixels = ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(p[0]), mode="L") for p in pixels]
