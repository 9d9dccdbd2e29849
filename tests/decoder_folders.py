"""Tiny random decoder folders in the real on-disk layouts, for tests anywhere under ``tests/``.

Each builder constructs the real pipeline class from tiny random components (seeded, so a folder's weights and its
sha256 are the same on every run) and writes it with ``save_pretrained``, exactly the layout a downloaded snapshot
has. ``tests/`` is on ``sys.path`` (the root conftest lives there), so any test can
``from decoder_folders import build_unclip_folder``; ``tests/decoders/conftest.py`` wraps them as session fixtures.

- :func:`build_tiny_folder`: the dprdm tiny format (``unet/`` + ``scheduler/``), grayscale 8×8 images.
- :func:`build_unclip_folder`: ``StableUnCLIPImg2ImgPipeline`` (``model_index.json``), RGB 16×16 images.
- :func:`build_kandinsky_folder`: ``KandinskyV22Pipeline`` (``model_index.json``), RGB 16×16 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _write_clip_tokenizer(folder: Path) -> None:
    """open_clip's bundled BPE vocab written as the vocab.json + merges.txt a transformers CLIPTokenizer reads."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n")


def build_tiny_folder(dest: Path, *, dim: int = 16, seed: int = 0) -> Path:
    """A random dprdm tiny decoder (8×8 grayscale, ``dim``-d conditions) saved under ``dest``; returns ``dest``."""
    from diffusers import DDIMScheduler

    from pipeline.decoders import TinyDecoder
    from pipeline.train.decoder import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(dim, image_size=8, block_out_channels=(8, 16), attention_head_dim=4)
    TinyDecoder(unet, DDIMScheduler(num_train_timesteps=50)).save_pretrained(dest)
    return dest


def build_unclip_folder(dest: Path, *, dim: int = 32, seed: int = 0) -> Path:
    """A random ``StableUnCLIPImg2ImgPipeline`` (``dim``-d image embeddings, 16 px) saved under ``dest``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tok_dir = dest.parent / f"{dest.name}-tokenizer-src"
    _write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = StableUnCLIPImg2ImgPipeline(
            feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=dim, projection_dim=dim, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                intermediate_size=37, patch_size=4)),
            image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=dim),
            image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
            tokenizer=tokenizer,
            text_encoder=CLIPTextModel(CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, hidden_size=dim, projection_dim=dim, intermediate_size=37,
                num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tokenizer), max_position_embeddings=77)),
            unet=UNet2DConditionModel(
                sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
                attention_head_dim=(2, 4), cross_attention_dim=dim, class_embed_type="projection",
                projection_class_embeddings_input_dim=2 * dim, use_linear_projection=True),
            scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
            vae=AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                              up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), norm_num_groups=8,
                              latent_channels=4, sample_size=16),
        )
    pipe.save_pretrained(dest)
    return dest


def build_kandinsky_folder(dest: Path, *, dim: int = 24, seed: int = 0) -> Path:
    """A random ``KandinskyV22Pipeline`` (``dim``-d image embeddings, 16 px) saved under ``dest``.

    The components follow diffusers' own fast Kandinsky 2.2 test (image_proj + image addition embedding, a 2-level
    spatial-norm MoVQ), scaled down to an 8×8 latent.
    """
    from diffusers import DDIMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=8, addition_embed_type="image",
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
            encoder_hid_dim=dim, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
            resnet_time_scale_shift="scale_shift", class_embed_type=None)
        movq = VQModel(
            block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
            num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(dest)
    return dest


def build_kandinsky_prior_stats(dest: Path, *, dim: int = 24, norm: float = 5.0) -> Path:
    """A ``prior/`` folder holding only ``clip_mean``/``clip_std`` with sqrt(Σ mean² + std²) = ``norm``."""
    from safetensors.torch import save_file

    (dest / "prior").mkdir(parents=True, exist_ok=True)
    std = torch.full((1, dim), norm / dim**0.5)
    save_file({"clip_mean": torch.zeros(1, dim), "clip_std": std},
              str(dest / "prior" / "diffusion_pytorch_model.safetensors"))
    return dest
