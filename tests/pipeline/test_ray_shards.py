"""Sharded private queries on Ray actors (issue 14): same checks, charge first, exactly the local release.

Ray runs locally (``ray.init(num_cpus=2)``), no cluster. Skipped when Ray (the ``scale`` extra) is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from accountant import BudgetExceeded, Mechanism, epsilon_for
from index import PrivateIndex
from pipeline import PrivateRetriever
from pipeline.errors import PipelineInputError

K, Q, SIGMA = 5, 0.2, 0.5


def _scope(queries: int) -> dict:
    mechanism = Mechanism(k=K, q=Q, sigma=SIGMA)
    low, high = (epsilon_for(mechanism, queries=n, delta=1e-6) for n in (queries, queries + 1))
    return {"k": K, "q": Q, "sigma": SIGMA, "epsilon": (low + high) / 2}


def _query(encoder, text: str) -> np.ndarray:
    return encoder.encode_text([text])[0]


def test_ray_release_equals_the_local_release(ray_local, encoder, two_shard_dir: Path, make_ledger) -> None:
    from pipeline.scale.ray_shards import RayShardRetriever

    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(20), high=_scope(20))
    local = PrivateRetriever(index, ledger, shards=["low", "high"])
    with RayShardRetriever(index, ledger, shards=["low", "high"]) as remote:
        for seed, text in enumerate(["a handwritten digit 4", "a handwritten digit 8", "a photo of a cat"]):
            query = _query(encoder, text)
            want = local.retrieve(query, _rng=np.random.default_rng(seed))
            got = remote.retrieve(query, _rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(got.vector, want.vector)
            assert not got.vector.flags.writeable and got.receipt.scopes == want.receipt.scopes
        # production randomness (no hook): a fresh CSPRNG subsample, still one charge per scope
        release = remote.retrieve(_query(encoder, "a digit"))
        assert release.vector.shape == (index.dim,)
    assert [len(ledger.history(name)) for name in ("low", "high")] == [7, 7]


def test_ray_refused_charge_asks_no_actor(ray_local, encoder, index_dir: Path, make_ledger) -> None:
    from pipeline.scale.ray_shards import RayShardRetriever

    ledger = make_ledger(default=_scope(1))
    rng = np.random.default_rng(0)
    with RayShardRetriever(PrivateIndex.open(index_dir), ledger) as remote:
        remote.retrieve(_query(encoder, "a digit"), _rng=rng)
        state = rng.bit_generator.state, rng.bit_generator.seed_seq.n_children_spawned
        with pytest.raises(BudgetExceeded):
            remote.retrieve(_query(encoder, "a digit"), _rng=rng)
        assert (rng.bit_generator.state, rng.bit_generator.seed_seq.n_children_spawned) == state
    assert len(ledger.history("default")) == 1


def test_ray_retriever_drives_the_pipeline(ray_local, encoder, decoder, index_dir: Path, make_ledger) -> None:
    import torch

    from pipeline import DPRDMPipeline
    from pipeline.scale.ray_shards import RayShardRetriever

    ledger = make_ledger(default=_scope(5))
    with RayShardRetriever(PrivateIndex.open(index_dir), ledger) as remote:
        result = DPRDMPipeline(remote, encoder, decoder)(
            "a handwritten digit 3", num_images=1, steps=1, generator=torch.Generator().manual_seed(0)
        )
    assert result.charged and len(result.images) == 1 and len(ledger.history("default")) == 1


def test_ray_damaged_shard_is_refused_before_any_charge(ray_local, two_shard_dir: Path, make_ledger) -> None:
    from index import IndexCorruptError
    from pipeline.scale.ray_shards import RayShardRetriever

    index = PrivateIndex.open(two_shard_dir)
    path = index.shard("high").path / "embeddings.npy"
    path.write_bytes(b"\xde\xad\xbe\xef" * 16 + path.read_bytes()[64:])  # same size, wrong checksum
    ledger = make_ledger(low=_scope(5), high=_scope(5))
    with pytest.raises(IndexCorruptError, match="checksum mismatch") as err:
        RayShardRetriever(index, ledger, shards=["low", "high"])
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert ledger.history() == []


def test_without_ray_the_error_says_how_to_install(monkeypatch) -> None:
    from pipeline.scale import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(PipelineInputError, match=r"pip install 'dprdm\[scale\]'") as err:
        require_ray()
    assert "\n" not in str(err.value)


def test_cli_generate_engine_ray(ray_local, index_dir: Path, make_ledger, decoder_dir, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from pipeline.cli import app

    ledger = make_ledger(default=_scope(5))
    result = CliRunner().invoke(app, [
        "generate", "a handwritten digit 2", "--index", str(index_dir), "--n-images", "1", "--steps", "1",
        "--decoder", str(decoder_dir), "--out", str(tmp_path / "out"), "--engine", "ray", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["queries_remaining"] == 4 and len(ledger.history("default")) == 1


def test_cli_generate_engine_ray_without_ray_says_how_to_install(index_dir: Path, make_ledger, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    ledger = make_ledger(default=_scope(5))
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["generate", "a digit", "--index", str(index_dir), "--engine", "ray"])
    assert result.exit_code == 2 and "pip install 'dprdm[scale]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and ledger.history() == []
