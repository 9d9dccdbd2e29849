"""Fixtures for the bundled default: the data split, tiny models built from config, a tiny Stable unCLIP folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import DigitSplit, load_mnist_split


@pytest.fixture(scope="session")
def split() -> DigitSplit:
    return load_mnist_split()


@pytest.fixture(scope="session")
def small_split(split: DigitSplit) -> DigitSplit:
    """20 public and 20 private rows per class: enough for smoke training runs."""
    def pick(labels: np.ndarray) -> np.ndarray:
        return np.concatenate([np.flatnonzero(labels == c)[:20] for c in range(10)])

    pub, priv = pick(split.public_labels), pick(split.private_labels)
    return DigitSplit(public_images=split.public_images[pub], public_labels=split.public_labels[pub],
                      private_images=split.private_images[priv], private_labels=split.private_labels[priv],
                      private_rows=split.private_rows[priv])


@pytest.fixture(scope="session")
def bundled_decoder():
    from pipeline.decoders import TinyDecoder

    return TinyDecoder.from_pretrained()


@pytest.fixture()
def tiny_decoder():
    """A TinyDecoder around a randomly initialised 8×8 UNet built from config."""
    from diffusers import DDPMScheduler

    from pipeline.decoders import TinyDecoder
    from pipeline.train.decoder import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(16, image_size=8, block_out_channels=(8, 16), attention_head_dim=4)
    return TinyDecoder(unet, DDPMScheduler(num_train_timesteps=100))


def _write_clip_tokenizer(folder: Path) -> None:
    """open_clip's bundled BPE vocab written as the vocab.json + merges.txt a transformers CLIPTokenizer reads."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n")


@pytest.fixture(scope="session")
def unclip_dir(tmp_path_factory) -> Path:
    """A tiny random StableUnCLIPImg2ImgPipeline (32-d embeddings, 32 px) saved with save_pretrained."""
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

    root = tmp_path_factory.mktemp("unclip")
    _write_clip_tokenizer(root / "tok")
    tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=77)
    dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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
    out = root / "pipe"
    pipe.save_pretrained(out)
    return out
