"""Test-wide setup: offline hubs, one torch thread, the torchvision shim before anything imports open_clip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import index._torchvision_compat  # noqa: E402,F401  (must run before open_clip / diffusers import torchvision)

torch.set_num_threads(1)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (``num_cpus=2``, no dashboard) for one test module; skips without Ray (the ``scale`` extra)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
