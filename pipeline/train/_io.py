"""Atomic file writes and the seeded-RNG scope shared by the training scripts."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON through a temp file + fsync + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save contiguous CPU copies of ``tensors`` as safetensors, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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
