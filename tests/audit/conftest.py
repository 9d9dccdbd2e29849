"""Fixtures for the audit tests: small CLIP-like datasets and a seeded mechanism generator (tests only)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audit import synthetic_embeddings


@pytest.fixture
def embeddings() -> np.ndarray:
    """300 unit rows in 32 dimensions around a shared direction."""
    return synthetic_embeddings(300, 32, seed=7)


@pytest.fixture
def mechanism_rng() -> np.random.Generator:
    """A seeded mechanism generator: reproducible tests; production audits use the OS CSPRNG."""
    return np.random.default_rng(20240601)
