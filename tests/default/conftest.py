"""Fixtures for the bundled default: the data split and tiny models built from config (decoder folders of every
family: tests/decoder_folders.py)."""

from __future__ import annotations

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
