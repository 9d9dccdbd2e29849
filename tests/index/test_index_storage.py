"""Data-independent compressed row storage (``--storage float16|int8``) and threaded exact scoring (issue 14).

Each format is a fixed per-value map (``index.storage``); scores are float32 query · decoded row, the top-k is
exact on them, threads never change a bit, and stored rows are checked at write and load with the format's
derived unit-norm tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from index_corpora import write_good_images
from typer.testing import CliRunner

from index import IndexCorruptError, IndexInputError, MemoryShard, PrivateIndex, build_index
from index import storage as formats
from index.rows import bad_rows
from pipeline.cli import app
from pipeline.mechanism import poisson_subsample, subsample_topk

COMPRESSED = ("float16", "int8")


def _unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _decoded_by_hand(rows: np.ndarray, storage: str) -> np.ndarray:
    """The documented format, written out independently of ``index.storage``."""
    if storage == "float16":
        return rows.astype(np.float16).astype(np.float32)
    if storage == "int8":
        codes = np.clip(np.rint(rows.astype(np.float32) * np.float32(127)), -127, 127).astype(np.int8)
        return codes.astype(np.float32) * np.float32(1 / 127)
    return rows.astype(np.float32)


@pytest.mark.parametrize("storage", COMPRESSED)
def test_scores_equal_a_float64_reference_on_the_decoded_rows(storage: str) -> None:
    rows = _unit_rows(3_000, 48)
    shard = MemoryShard(rows, storage=storage)
    decoded = _decoded_by_hand(rows, storage)
    positions = np.sort(np.random.default_rng(1).choice(3_000, 900, replace=False))
    np.testing.assert_array_equal(shard.rows(positions), decoded[positions])  # rows() decodes exactly as documented
    for query in _unit_rows(5, 48, seed=2):
        reference = decoded[positions].astype(np.float64) @ query.astype(np.float64)
        np.testing.assert_allclose(shard.score(query, positions), reference, rtol=0, atol=2e-6)
    assert shard.storage == storage and shard._embeddings.dtype == formats.dtype_of(storage)


@pytest.mark.parametrize("storage", COMPRESSED)
def test_topk_on_compressed_rows_equals_brute_force_on_the_decoded_rows(storage: str) -> None:
    rows, k, q = _unit_rows(4_000, 32, seed=3), 10, 0.3
    ids = np.arange(4_000, dtype=np.int64) * 3 + 1
    shard = MemoryShard(rows, ids, storage=storage)
    decoded = _decoded_by_hand(rows, storage).astype(np.float64)
    checked = 0
    for number, query in enumerate(_unit_rows(30, 32, seed=4)):
        got = subsample_topk(shard, query, k, q, np.random.default_rng(number))
        kept = poisson_subsample(4_000, q, np.random.default_rng(number))
        scores = decoded[kept] @ query.astype(np.float64)
        order = np.lexsort((ids[kept], -scores))
        if scores[order[k - 1]] - scores[order[k]] < 1e-5:  # float32 rounding could reorder a near-tie at the cut
            continue
        checked += 1
        np.testing.assert_array_equal(np.sort(got), np.sort(ids[kept][order[:k]]))
    assert checked >= 25


@pytest.mark.parametrize("storage", ("float32", *COMPRESSED))
def test_threaded_scores_are_bit_identical_to_one_thread(storage: str) -> None:
    rows = _unit_rows(20_000, 64, seed=5)
    one, many = MemoryShard(rows, storage=storage), MemoryShard(rows, storage=storage, threads=3)
    rng = np.random.default_rng(6)
    for size in (0, 1, 255, 700, 5_001, 20_000):
        positions = np.sort(rng.choice(20_000, size, replace=False))
        query = _unit_rows(1, 64, seed=size)[0]
        np.testing.assert_array_equal(many.score(query, positions), one.score(query, positions))
    for number in range(5):
        query = _unit_rows(1, 64, seed=100 + number)[0]
        assert np.array_equal(
            subsample_topk(many, query, 20, 0.2, np.random.default_rng(number)),
            subsample_topk(one, query, 20, 0.2, np.random.default_rng(number)),
        )


def test_threads_are_checked() -> None:
    with pytest.raises(IndexInputError, match="threads must be an integer >= 1"):
        MemoryShard(_unit_rows(4, 8), threads=0)


@pytest.mark.parametrize("storage", COMPRESSED)
def test_unit_tolerance_covers_the_worst_quantisation_error_and_nothing_more(storage: str) -> None:
    d = 768
    tolerance = formats.unit_tolerance(storage, d)
    # int8's worst case: every coordinate half a step from its code (|x_i| = (j + 1/2)/127 with the norm at 1)
    half_steps = np.full((1, d), 0.5 / 127, dtype=np.float64)
    rows = np.concatenate([_unit_rows(2_000, d, seed=7), half_steps / np.linalg.norm(half_steps)]).astype(np.float32)
    decoded = formats.decode(formats.encode(rows, storage)).astype(np.float64)
    deviation = np.abs(np.linalg.norm(decoded, axis=1) - 1.0)
    assert deviation.max() <= tolerance and bad_rows(formats.encode(rows, storage), storage) == 0
    assert bad_rows(formats.encode(rows * np.float32(1 + 2 * tolerance), storage), storage) == len(rows)
    assert formats.unit_tolerance("float32", d) == 1e-3
    assert tolerance == pytest.approx({"float16": 1.5e-3, "int8": 0.1101}[storage], abs=1e-4)


def test_storage_is_a_fixed_map_of_each_value_alone() -> None:
    rows = _unit_rows(50, 16, seed=8)
    for storage in COMPRESSED:
        together = formats.encode(rows, storage)
        alone = np.concatenate([formats.encode(row[None], storage) for row in rows])
        assert np.array_equal(together, alone)  # no range or statistic learned from the other rows
        assert np.array_equal(formats.encode(formats.decode(together), storage), together)  # idempotent (add/remove)
    assert formats.encode(np.array([[1.0, -1.0, 0.0039, 0.0040]], np.float32), "int8").tolist() == [[127, -127, 0, 1]]


@pytest.mark.parametrize("storage", COMPRESSED)
def test_build_add_remove_keep_the_storage_and_round_trip(
    tmp_path: Path, tiny_model: str, corpus: Path, storage: str
) -> None:
    reference = build_index(corpus, tmp_path / "f32", model=tiny_model, progress=False)
    report = build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False, storage=storage)
    assert report.to_dict()["shards"]["default"]["storage"] == storage
    assert reference.to_dict()["shards"]["default"]["storage"] == "float32"
    index, plain = PrivateIndex.open(tmp_path / "ix"), PrivateIndex.open(tmp_path / "f32")
    shard = index.shard("default").load()
    assert shard.manifest["storage"] == storage and shard.storage == storage
    assert np.load(shard.path / "embeddings.npy").dtype == formats.dtype_of(storage)
    assert np.array_equal(shard.ids, plain.shard("default").ids)
    np.testing.assert_array_equal(shard.embeddings, _decoded_by_hand(plain.shard("default").embeddings, storage))
    before = shard.embeddings
    extra = tmp_path / "extra"
    write_good_images(extra, 3, start=100)
    index.add(extra)
    index.remove(ids=[int(shard.ids[0])])
    after = PrivateIndex.open(tmp_path / "ix").shard("default").load()
    assert after.storage == storage and after.num_records == shard.num_records + 3 - 1
    kept = {int(i): row for i, row in zip(after.ids, after.embeddings, strict=True)}
    for i, row in zip(shard.ids[1:], before[1:], strict=True):
        np.testing.assert_array_equal(kept[int(i)], row)  # re-encoding decoded rows changes no bit
    with pytest.raises(IndexInputError, match=f"stored as {storage}; a shard's storage is fixed at creation"):
        build_index(corpus, tmp_path / "ix", progress=False, storage="float32")
    build_index(corpus, tmp_path / "ix", shard="plain", progress=False)  # a new shard: float32 by default
    assert PrivateIndex.open(tmp_path / "ix").info()["shards"]["plain"]["storage"] == "float32"


def test_a_compressed_shard_with_rows_off_the_unit_sphere_is_refused_at_load(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False, storage="int8")
    shard = PrivateIndex.open(tmp_path / "ix").shard("default")
    stored = np.load(shard.path / "embeddings.npy")
    stored[2] = 0  # a zero row, re-checksummed so that only the row check can catch it
    np.save(shard.path / "embeddings.npy", stored)
    manifest = json.loads((shard.path / "manifest.json").read_text())
    from index.store import file_sha256

    manifest["files"]["embeddings.npy"]["sha256"] = file_sha256(shard.path / "embeddings.npy")
    (shard.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="not finite unit vectors"):
        PrivateIndex.open(tmp_path / "ix").shard("default").load()


@pytest.mark.parametrize("damage", ["norm", "nan"])
def test_a_row_off_the_sphere_is_refused_at_write(tmp_path: Path, damage: str) -> None:
    from index.safety import IndexKind
    from index.shard import ShardContent, write_shard

    rows = _unit_rows(4, 8)
    rows[1] = rows[1] * np.float32(1.3) if damage == "norm" else np.nan
    content = ShardContent(name="s", ids=np.arange(4, dtype=np.int64), embeddings=rows, rows=[], aliases=[],
                           skipped=[], created="now", storage="int8")  # fmt: skip
    with pytest.raises(IndexCorruptError, match=r"not finite unit vectors \(storage int8\)"):
        write_shard(tmp_path, content, kind=IndexKind.FLAT, template=None, common={})
    assert not (tmp_path / "shards").exists()  # refused before anything is written


def _cli(*args: str | Path):
    return CliRunner().invoke(app, ["index", *map(str, args)])


def test_cli_storage_bad_value_and_ivf_are_exit_2_one_line(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    bad = _cli("build", corpus, "--index", tmp_path / "ix", "--model", tiny_model, "--storage", "int4")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1
    assert "--storage must be one of float32, float16, int8; found 'int4'" in bad.stderr
    public = tmp_path / "public.npy"
    np.save(public, _unit_rows(64, 16, seed=9))
    ivf = _cli("build", corpus, "--index", tmp_path / "ivf", "--model", tiny_model, "--index-type", "ivf-flat",
               "--public-train", public, "--storage", "int8")  # fmt: skip
    assert ivf.exit_code == 2 and ivf.stderr.count("\n") == 1 and "not supported with --index-type ivf-flat" in ivf.stderr
    assert not (tmp_path / "ix").exists() and not (tmp_path / "ivf").exists()
    ok = _cli("build", corpus, "--index", tmp_path / "ix", "--model", tiny_model, "--storage", "float16", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["shards"]["default"]["storage"] == "float16"
    human = _cli("info", "--index", tmp_path / "ix")
    assert human.exit_code == 0 and "records (float16)" in human.stdout
