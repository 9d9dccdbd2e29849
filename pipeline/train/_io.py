"""Atomic writes of the training outputs (through the pipeline's one atomic write) and the seeded-RNG scope."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline._files import atomic_write_bytes

SHIPPED_MODE = 0o644  # bundled model files are readable by everyone (they hold public-data models only)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically (folders created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode(), mode=SHIPPED_MODE)


def save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save contiguous CPU copies of ``tensors`` as safetensors, atomically."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(path, data, mode=SHIPPED_MODE)


@contextlib.contextmanager
def seeded_torch(seed: int, num_threads: int | None) -> Iterator[torch.Generator]:
    """Run a training job with a fixed seed and thread count, restoring the caller's global RNG and threads.

    Module initialisation draws from torch's global RNG, so the job seeds it inside ``fork_rng`` (the caller's
    stream is restored afterwards) and also hands out an explicit generator for the job's own draws.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(previous_threads)
