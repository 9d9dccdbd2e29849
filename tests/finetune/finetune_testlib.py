"""Helpers shared by the fine-tuning tests: write a digit corpus, build a tiny UNet from config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data import load_mnist_split, to_pil

PER_CLASS = 20


def write_digits(folder: Path, per_class: int = PER_CLASS) -> Path:
    split = load_mnist_split()
    for label in range(10):
        rows = np.flatnonzero(split.private_labels == label)[:per_class]
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for row in rows:
            to_pil(split.private_images[row]).save(folder / str(label) / f"{row:04d}.png")
    return folder


def tiny_unet(dim: int, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(8, 16), cross_attention_dim=dim,
        attention_head_dim=4, class_embed_type="projection", projection_class_embeddings_input_dim=dim,
    )
