"""Private queries on a compressed (int8, fixed range) index: same checks, same charge, same mechanism (issue 14).

The mechanism's code is unchanged: it scores decoded rows through the shard primitives, and ``aggregate`` clips
every row onto the unit ball, so the 2/k sensitivity holds for decoded rows whose norm exceeds 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from digit_folders import write_digit_classes

from accountant import Ledger
from index import IndexCorruptError, MemoryShard, PrivateIndex, build_index
from index import rows as row_primitives
from pipeline import PrivateRetriever
from pipeline.mechanism import _subsample_search, aggregate, privatize

SCOPE = {"k": 5, "q": 0.5, "sigma": 0.5, "epsilon": 500.0, "delta": 1e-6}


@pytest.fixture(scope="module")
def built_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 100 private digits as a float32 index and as an int8 index (bundled encoder)."""
    root = tmp_path_factory.mktemp("storage")
    write_digit_classes(root / "pngs", range(10), 10)
    built = {}
    for storage in ("float32", "int8"):
        build_index(root / "pngs", root / storage, progress=False, num_threads=1, storage=storage)
        built[storage] = root / storage
    return built


def _copy(built: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(built, tmp_path / built.name))


def _ledger(index_dir: Path) -> Ledger:
    ledger = Ledger(index_dir / "budget.sqlite")
    ledger.create_scope("default", **SCOPE)
    return ledger


def test_int8_query_charges_and_releases_like_float32(built_pair, encoder, tmp_path: Path) -> None:
    releases = {}
    for storage, built in built_pair.items():
        index = PrivateIndex.open(_copy(built, tmp_path))
        assert index.info()["shards"]["default"]["storage"] == storage
        ledger = _ledger(index.path)
        retriever = PrivateRetriever(index, ledger)
        used_norms = []
        for seed, text in enumerate(["a handwritten digit 3", "a handwritten digit 7", "a digit"]):
            query = encoder.encode_text([text])[0]
            release = retriever.retrieve(query, _rng=np.random.default_rng(seed))
            # the release is exactly aggregate(decoded neighbour rows) + the noise (same seeded draws)
            replay = np.random.default_rng(seed)
            rows = retriever._neighbours(query, SCOPE["k"], SCOPE["q"], replay)
            mean = aggregate(rows, SCOPE["k"])
            np.testing.assert_array_equal(release.vector, privatize(mean, SCOPE["sigma"], _rng=replay))
            norms = np.linalg.norm(rows.astype(np.float64), axis=1)
            used_norms.extend(norms.tolist())
            clipped = rows / np.maximum(norms, 1.0)[:, None]  # what the sensitivity argument needs: norms ≤ 1
            np.testing.assert_allclose(mean, clipped.sum(axis=0) / SCOPE["k"], atol=1e-6)
            assert np.linalg.norm(mean) <= 1.0 + 1e-6
            releases.setdefault(storage, []).append(release)
        assert len(ledger.history("default")) == 3 and ledger.status("default").queries_charged == 3
        if storage == "int8":
            assert max(used_norms) > 1.0  # decoded rows above the unit norm do occur, and are clipped by aggregate
    for f32, i8 in zip(releases["float32"], releases["int8"], strict=True):
        assert f32.receipt.scopes == i8.receipt.scopes == ("default",)
        assert f32.vector.shape == i8.vector.shape and f32.epsilon_spent == i8.epsilon_spent


def test_sensitivity_holds_on_decoded_int8_rows() -> None:
    """Add/remove-one (q = 1, so the sample is the whole set): the mean moves by at most 2/k."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    k = 5
    for number, query in enumerate(rows[:20]):
        full = MemoryShard(rows, storage="int8")
        _, _, positions = _subsample_search(full, query, k, 1.0, np.random.default_rng(number))
        for drop in (int(positions[0]), int(positions[-1]), number + 100):
            keep = np.delete(np.arange(len(rows)), drop)
            fewer = MemoryShard(rows[keep], keep, storage="int8")
            _, _, others = _subsample_search(fewer, query, k, 1.0, np.random.default_rng(number))
            moved = aggregate(full.rows(positions), k).astype(np.float64) - aggregate(fewer.rows(others), k)
            assert np.linalg.norm(moved) <= 2 / k + 1e-6
        assert np.linalg.norm(full.rows(positions).astype(np.float64), axis=1).max() <= 1 + 0.05


def test_damaged_int8_shard_is_refused_before_any_charge(built_pair, encoder, tmp_path: Path) -> None:
    index = PrivateIndex.open(_copy(built_pair["int8"], tmp_path))
    stored = index.shard("default").path / "embeddings.npy"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle: same size, only the checksum sees it
    stored.write_bytes(bytes(data))
    ledger = _ledger(index.path)
    with pytest.raises(IndexCorruptError, match="checksum mismatch") as err:
        PrivateRetriever(index, ledger).retrieve(encoder.encode_text(["a digit"])[0], _rng=np.random.default_rng(0))
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert ledger.history() == [] and ledger.status("default").queries_charged == 0


def test_threads_give_the_same_release_on_an_int8_index(built_pair, encoder, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(row_primitives, "_MIN_PER_THREAD", 4)  # 100 rows: let every query use both threads
    path = _copy(built_pair["int8"], tmp_path)
    ledger = _ledger(path)
    one = PrivateRetriever(PrivateIndex.open(path), ledger)
    two_index = PrivateIndex.open(path, threads=2)
    two = PrivateRetriever(two_index, ledger)
    assert two_index.shard("default").threads == 2 and one.index.shard("default").threads == 1
    for seed in range(3):
        query = encoder.encode_text([f"a handwritten digit {seed}"])[0]
        first = one.retrieve(query, _rng=np.random.default_rng(seed))
        second = two.retrieve(query, _rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(first.vector, second.vector)


def test_ray_shard_actor_serves_an_int8_shard_like_the_local_path(
    ray_local, built_pair, encoder, tmp_path: Path
) -> None:
    from pipeline.scale.ray_shards import RayShardRetriever

    path = _copy(built_pair["int8"], tmp_path)
    index, ledger = PrivateIndex.open(path), _ledger(path)
    local = PrivateRetriever(index, ledger)
    with RayShardRetriever(index, ledger, num_cpus=0) as remote:
        for seed in range(2):
            query = encoder.encode_text([f"a handwritten digit {seed + 5}"])[0]
            want = local.retrieve(query, _rng=np.random.default_rng(seed))
            got = remote.retrieve(query, _rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(got.vector, want.vector)
    assert ledger.status("default").queries_charged == 4
