"""Imported once by the drill fork server so that forked children start warm (no torch/diffusers import)."""

import index._torchvision_compat  # noqa: F401,I001  (first: the shim makes open_clip/diffusers importable)
import index  # noqa: F401
import accountant  # noqa: F401
import open_clip  # noqa: F401
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: F401

import pipeline.cli  # noqa: F401
import pipeline.decoders  # noqa: F401
import pipeline.generate  # noqa: F401
import pipeline.outputs  # noqa: F401
import pipeline.retrieve  # noqa: F401

torch.set_num_threads(1)
