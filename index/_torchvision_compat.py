"""Make ``import torchvision`` (and so ``open_clip`` and diffusers' transformers path) work next to CPU torch.

PyPI's torchvision 0.28.0 is a CUDA build: its ``_C.so`` cannot load beside the CPU torch wheel, and
``torchvision._meta_registrations`` then calls ``register_fake`` on ``torchvision::nms``/``qnms`` that were never
defined, so the import fails with "operator torchvision::nms does not exist". Defining the two op schemas first
lets the import finish; transforms and PIL helpers work, ``torchvision.ops`` kernels do not (dprdm uses none).

It is imported (it loads torch, so not by ``import index``) where open_clip or diffusers can be imported next:
:mod:`index.encoder` (before open_clip), :mod:`pipeline.decoders.base` (every decoder), :mod:`pipeline.train`,
the demo, and ``tests/conftest.py``.
See ``shared/notes/feasibility.md`` (torchvision shim).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def ensure_torchvision_importable() -> None:
    """Define the torchvision op schemas that a CUDA torchvision build needs, if its kernels cannot load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    try:  # a matching torch loads the real ops: nothing to do
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
        return
    except (OSError, RuntimeError):
        pass
    for name in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already defined (second call, or a real build)
            torch.library.define(f"torchvision::{name}", _SCHEMA)


ensure_torchvision_importable()
