"""Shared fixtures: the tiny MLP setting (seconds) and a tiny diffusers UNet (the decoder's architecture)."""

from __future__ import annotations

import pytest
import torch

from pipeline.attribution import AttributionModel
from pipeline.attribution.retrain import ddpm_scheduler
from tests.attribution.tiny import tiny_setting


@pytest.fixture(scope="session")
def tiny():
    """(backbone, full model, train set of 48, 16 val queries, retrain kwargs) on 8×8 digits 0/1."""
    return tiny_setting()


@pytest.fixture(scope="session")
def tiny_unet_model():
    """A randomly initialised UNet2DConditionModel in the decoder's layout (8×8, channels (8, 16))."""
    from pipeline.train.decoder import build_unet

    torch.manual_seed(0)
    unet = build_unet(4, image_size=8, block_out_channels=(8, 16), attention_head_dim=4)
    return AttributionModel(unet, ddpm_scheduler(), name="tiny-unet")
