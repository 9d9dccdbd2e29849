"""Helpers shared by the fine-tuning tests: write a digit corpus, build a tiny UNet from config."""

from __future__ import annotations

import torch

PER_CLASS = 20


def tiny_unet(dim: int, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(8, 16), cross_attention_dim=dim,
        attention_head_dim=4, class_embed_type="projection", projection_class_embeddings_input_dim=dim,
    )
