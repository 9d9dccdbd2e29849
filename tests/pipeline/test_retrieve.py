"""PrivateRetriever: charge first, one transaction over all shards, release only the noisy vector."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from accountant import BudgetExceeded, Mechanism, epsilon_for
from index import PrivateIndex
from pipeline import PrivateRelease, PrivateRetriever
from pipeline.errors import PipelineInputError, PrivacyRefusal
from pipeline.mechanism import aggregate, poisson_subsample, privatize

K, Q, SIGMA = 5, 0.2, 0.5


def _scope(queries: int, **change) -> dict:
    """Scope parameters of the test mechanism with an epsilon budget that fits exactly ``queries`` queries."""
    mechanism = Mechanism(k=change.get("k", K), q=Q, sigma=SIGMA)
    low, high = (epsilon_for(mechanism, queries=n, delta=1e-6) for n in (queries, queries + 1))
    return {"k": mechanism.k, "q": Q, "sigma": SIGMA, "epsilon": (low + high) / 2}
FORBIDDEN_KEYS = {"ids", "id", "scores", "score", "distances", "neighbours", "neighbors", "seed", "aggregate", "vector"}


def _query(encoder, text: str = "a handwritten digit 7") -> np.ndarray:
    return encoder.encode_text([text])[0]


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {key for value in obj.values() for key in _keys(value)}
    if isinstance(obj, list):
        return {key for value in obj for key in _keys(value)}
    return set()


def test_retrieve_charges_one_query_and_releases_only_the_noisy_vector(encoder, index_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(index_dir)
    ledger = make_ledger(default=_scope(50))
    release = PrivateRetriever(index, ledger).retrieve(_query(encoder), caller="test")
    assert {f.name for f in dataclasses.fields(PrivateRelease)} == {"vector", "k", "q", "sigma", "receipt", "statuses"}
    assert release.vector.shape == (index.dim,) and release.vector.dtype == np.float32
    assert not release.vector.flags.writeable
    assert release.receipt.scopes == ("default",)
    assert len(ledger.history("default")) == 1
    assert release.statuses[0].queries_charged == 1 and release.queries_remaining == 49
    payload = release.to_dict()
    json.dumps(payload)
    assert not _keys(payload) & FORBIDDEN_KEYS


def test_release_equals_the_mechanism_on_the_union_of_shards(encoder, two_shard_dir: Path, make_ledger) -> None:
    """Same randomness → per-shard Poisson subsamples, brute-force top-k over their union, mean, noise."""
    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(20), high=_scope(20))
    query = _query(encoder, "a handwritten digit 4")
    release = PrivateRetriever(index, ledger, shards=["low", "high"]).retrieve(query, _rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    kept = []
    for name, stream in zip(("low", "high"), rng.spawn(2), strict=True):  # one spawned stream per shard
        shard = index.shard(name)
        kept.append(np.asarray(shard.embeddings)[poisson_subsample(shard.num_records, Q, stream)])
    union = np.concatenate(kept)
    best = union[np.argsort(-(union @ query), kind="stable")[: K]]
    expected = privatize(aggregate(best, K), release.sigma, _rng=rng)
    np.testing.assert_allclose(release.vector, expected, atol=1e-6)
    assert {line.scope for line in release.receipt.lines} == {"low", "high"}


def test_budget_exceeded_retrieves_nothing(encoder, index_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(index_dir)
    ledger = make_ledger(default=_scope(2))
    retriever = PrivateRetriever(index, ledger)
    query = _query(encoder)
    for _ in range(2):
        retriever.retrieve(query)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(BudgetExceeded, match="budget"):
        retriever.retrieve(query, _rng=rng)
    assert rng.bit_generator.state == state, "records were subsampled after a refused charge"
    assert len(ledger.history("default")) == 2


def test_every_targeted_shard_is_charged_or_none(encoder, two_shard_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(1), high=_scope(100))
    retriever = PrivateRetriever(index, ledger, shards=["low", "high"])
    query = _query(encoder)
    retriever.retrieve(query)
    with pytest.raises(BudgetExceeded):
        retriever.retrieve(query)
    assert len(ledger.history("low")) == 1 and len(ledger.history("high")) == 1
    assert ledger.status("high").queries_charged == 1
    PrivateRetriever(index, ledger, shards=["high"]).retrieve(query)  # the other shard alone still answers
    assert ledger.status("high").queries_charged == 2


def test_default_targets_every_shard(encoder, two_shard_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(10), high=_scope(10))
    assert set(PrivateRetriever(index, ledger).retrieve(_query(encoder)).receipt.scopes) == {"low", "high"}


def test_mismatched_mechanisms_are_refused_before_any_charge(encoder, two_shard_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(10), high=_scope(10, k=6))
    with pytest.raises(PrivacyRefusal, match="different mechanisms"):
        PrivateRetriever(index, ledger).retrieve(_query(encoder))
    assert ledger.history() == []


def test_a_shard_without_a_scope_is_refused(encoder, two_shard_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(two_shard_dir)
    ledger = make_ledger(low=_scope(10))
    with pytest.raises(PrivacyRefusal, match="no budget scope.*dprdm budget init"):
        PrivateRetriever(index, ledger).retrieve(_query(encoder))
    assert ledger.history() == []


@pytest.mark.parametrize(
    ("shards", "match"),
    [(["nope"], "unknown shard 'nope'"), (["default", "default"], "distinct"), ([], "no shard")],
    ids=["unknown", "repeated", "empty"],
)
def test_bad_shard_selection_is_an_input_error(index_dir: Path, make_ledger, shards: list[str], match: str) -> None:
    with pytest.raises(PipelineInputError, match=match):
        PrivateRetriever(PrivateIndex.open(index_dir), make_ledger(default=_scope(5)), shards=shards)


def test_bad_query_is_refused_before_the_charge(encoder, index_dir: Path, make_ledger) -> None:
    index = PrivateIndex.open(index_dir)
    ledger = make_ledger(default=_scope(5))
    with pytest.raises(PipelineInputError, match="unit L2 norm"):
        PrivateRetriever(index, ledger).retrieve(2 * _query(encoder))
    with pytest.raises(PipelineInputError, match="dimension"):
        PrivateRetriever(index, ledger).retrieve(np.ones(index.dim + 1, np.float32) / np.sqrt(index.dim + 1))
    assert ledger.history() == []


@pytest.mark.parametrize("mmap", [False, True], ids=["in-memory", "mmap"])
def test_with_q_one_the_sample_is_everything_and_topk_is_exact(encoder, index_dir: Path, mmap: bool) -> None:
    from pipeline.mechanism import subsample_topk

    shard = PrivateIndex.open(index_dir, mmap=mmap).shard("default")
    query = _query(encoder, "a handwritten digit 0")
    scores = shard.embeddings @ query  # numpy oracle: exact top-k, equal scores by the smaller id
    exact = shard.ids[np.lexsort((shard.ids, -scores.astype(np.float64)))[:K]]
    np.testing.assert_array_equal(subsample_topk(shard, query, K, 1.0, np.random.default_rng(0)), exact)
