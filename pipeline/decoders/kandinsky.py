"""``KandinskyV22Decoder``: the Kandinsky 2.2 decoder (diffusers ``KandinskyV22Pipeline``) behind the Decoder seam.

The decoder (``kandinsky-community/kandinsky-2-2-decoder``: UNet + MoVQ + scheduler) is conditioned only on a CLIP
ViT-bigG/14 image embedding (1280-d; the UNet's ``encoder_hid_dim``): ``image_embeds`` for the conditional branch and
``negative_image_embeds`` for classifier-free guidance. It has no text path, so the DP aggregate is the whole
condition. dprdm indexes with the same encoder (open_clip ``ViT-bigG-14``, ``laion2b_s39b_b160k``), runs DP on unit
embeddings, and this class rescales the noisy aggregate to the decoder's embedding norm (post-processing, no budget).

The decoder folder holds no image encoder, so the target norm comes from ``embedding_norm``, from raw embeddings of
PUBLIC images (``public_embeddings``), or from the CLIP statistics stored in a Kandinsky 2.2 prior folder
(``prior_dir``); without any of them rows are kept at norm 1 (the UNet projects the embedding through
Linear + LayerNorm, so the direction carries most of the condition). Weights are read from local folders only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from index.fs import expand_user
from pipeline.decoders._diffusers import DiffusersDecoder, load_pipeline
from pipeline.decoders.base import EmbeddingScaling, as_array, mean_embedding_norm
from pipeline.errors import PipelineInputError


def prior_embedding_norm(prior_dir: str | Path) -> float:
    """Typical raw image-embedding norm sqrt(Σ clip_mean² + clip_std²) from a Kandinsky 2.2 prior's statistics.

    Reads only the two small ``clip_mean``/``clip_std`` tensors of ``prior/diffusion_pytorch_model.safetensors``.

    Args:
        prior_dir: a ``KandinskyV22PriorPipeline`` folder, or its ``prior/`` subfolder.

    Raises:
        PipelineInputError: no prior weights with those statistics are found.
    """
    from safetensors import safe_open

    folder = expand_user(prior_dir)
    candidates = [folder / "prior", folder]
    files = [p for c in candidates for p in sorted(c.glob("diffusion_pytorch_model*.safetensors"))]
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            if {"clip_mean", "clip_std"} <= set(handle.keys()):
                mean, std = handle.get_tensor("clip_mean").float(), handle.get_tensor("clip_std").float()
                return float(torch.sqrt((mean**2 + std**2).sum()))
    raise PipelineInputError(
        f"prior_dir {folder} has no prior safetensors with clip_mean/clip_std; pass the folder of "
        "kandinsky-2-2-prior (or its prior/ subfolder), or give embedding_norm"
    )


class KandinskyV22Decoder(DiffusersDecoder):
    """Generate with the Kandinsky 2.2 decoder from aggregated unit embeddings.

    Args:
        pipe: a ``KandinskyV22Pipeline`` (unet, scheduler, movq).
        embedding_norm: target norm of the rescaled aggregate; None = 1.0 (see the module docstring).
        embedding_scaling: how the unit aggregate is mapped to that norm (:class:`EmbeddingScaling`).
        negative_image_embeds: the guidance branch's embedding, shape (d,) or (1, d), in raw embedding scale (an
            array or a ``.npy`` path); None = zeros. The stock pipeline uses the prior's ``get_zero_embed()`` (embedding of a black image).
        num_inference_steps: steps when ``generate(steps=None)``; default 50 (diffusers' usage example).
        height, width: output size in pixels (None = UNet sample size × MoVQ factor); rounded up to a multiple of
            the MoVQ factor squared, as the pipeline does.
    """

    family = "kandinsky-2.2"
    default_steps = 50

    def __init__(self, pipe, *, embedding_norm: float | None = None,
                 embedding_scaling: EmbeddingScaling | str = EmbeddingScaling.NORMALIZE,
                 negative_image_embeds=None, num_inference_steps: int | None = None, height: int | None = None,
                 width: int | None = None) -> None:
        super().__init__(pipe, embedding_norm=1.0 if embedding_norm is None else embedding_norm,
                         embedding_scaling=embedding_scaling, num_inference_steps=num_inference_steps,
                         height=height, width=width)
        dim = self.condition_dim
        if negative_image_embeds is None:
            negative = torch.zeros(1, dim)
        else:
            negative = as_array(negative_image_embeds, "negative_image_embeds").float().reshape(1, -1)
            if negative.shape[1] != dim or not torch.isfinite(negative).all():
                raise PipelineInputError(
                    f"negative_image_embeds must be one finite embedding of width {dim}; found {negative.shape[1]} "
                    "values; pass the prior's zero embedding of the same ViT-bigG encoder"
                )
        self.negative_image_embeds = negative

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, *, embedding_norm: float | None = None, public_embeddings=None,
                        prior_dir: str | Path | None = None,
                        embedding_scaling: EmbeddingScaling | str = EmbeddingScaling.NORMALIZE,
                        negative_image_embeds=None, num_inference_steps: int | None = None,
                        height: int | None = None, width: int | None = None,
                        torch_dtype: torch.dtype | str | None = None, variant: str | None = None,
                        device: str | torch.device | None = None) -> KandinskyV22Decoder:
        """Load a ``KandinskyV22Pipeline`` saved with ``save_pretrained`` from ``local_dir`` (no download).

        Args:
            local_dir: folder with ``model_index.json`` naming ``KandinskyV22Pipeline`` (unet/, scheduler/, movq/).
            embedding_norm: target norm; wins over the estimates below.
            public_embeddings: raw (unnormalised) ViT-bigG embeddings of PUBLIC images, (n, d) or a .npy path;
                mean norm = target.
            prior_dir: a Kandinsky 2.2 prior folder; target = :func:`prior_embedding_norm` (used when neither
                of the above is given).
            embedding_scaling, negative_image_embeds, num_inference_steps, height, width: see the class.
            torch_dtype, variant, device: as for :meth:`StableUnCLIPDecoder.from_pretrained`.

        Raises:
            PipelineInputError: the folder is not a Kandinsky 2.2 decoder pipeline, or a knob is out of range.
        """
        from diffusers import KandinskyV22Pipeline

        from pipeline.decoders.loading import DecoderFamily, describe_decoder

        info = describe_decoder(local_dir, expect=DecoderFamily.KANDINSKY_V22)
        if embedding_norm is None and public_embeddings is not None:
            embedding_norm = mean_embedding_norm(public_embeddings, info.condition_dim)
        elif embedding_norm is None and prior_dir is not None:
            embedding_norm = prior_embedding_norm(prior_dir)
        pipe = load_pipeline(KandinskyV22Pipeline, info.folder, torch_dtype=torch_dtype, variant=variant,
                             device=device)
        decoder = cls(pipe, embedding_norm=embedding_norm, embedding_scaling=embedding_scaling,
                      negative_image_embeds=negative_image_embeds, num_inference_steps=num_inference_steps,
                      height=height, width=width)
        decoder._set_source(info.folder, variant=variant)
        return decoder

    @property
    def condition_dim(self) -> int:
        """Width of the image embeddings the UNet takes (``encoder_hid_dim``; 1280 for ViT-bigG Kandinsky 2.2)."""
        return int(self.pipe.unet.config.encoder_hid_dim)

    def _run(self, embeds: torch.Tensor, *, steps: int, guidance_scale: float, generator) -> list[Image.Image]:
        """One pipeline call: ``image_embeds``, with CFG against ``negative_image_embeds`` when ``guidance_scale > 1``."""
        negative = self.negative_image_embeds.to(device=embeds.device, dtype=embeds.dtype).expand_as(embeds)
        side = self.pipe.unet.config.sample_size * self.pipe.movq_scale_factor
        out = self.pipe(
            image_embeds=embeds,
            negative_image_embeds=negative,
            height=self.height or side,
            width=self.width or side,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pil",
        )
        return list(out.images)
