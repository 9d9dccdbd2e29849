"""Fixtures for the audit tests: small CLIP-like datasets and a seeded mechanism generator (tests only)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audit.run import synthetic_embeddings


@pytest.fixture
def embeddings() -> np.ndarray:
    """300 unit rows in 32 dimensions around a shared direction."""
    return synthetic_embeddings(300, 32, seed=7)


@pytest.fixture
def mechanism_rng() -> np.random.Generator:
    """A seeded mechanism generator: reproducible tests; production audits use the OS CSPRNG."""
    return np.random.default_rng(20240601)


@pytest.fixture(scope="module")
def audited_index(tmp_path_factory):
    """A real 12-record index (bundled tiny encoder) with a ledger scope for its default shard."""
    from PIL import Image

    from accountant import Ledger, Mechanism
    from index import build_index

    root = tmp_path_factory.mktemp("audited")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, size=(28, 28), dtype=np.uint8), mode="L").save(
            corpus / f"{i}.png"
        )
    index_dir = root / "idx"
    build_index(corpus, index_dir, progress=False, num_threads=1)
    with Ledger(index_dir / "budget.sqlite") as ledger:
        ledger.create_scope(
            "default", epsilon=8.0, delta=1e-3, mechanism=Mechanism(k=3, q=1.0, sigma=2.0), records=12
        )
    return index_dir
