"""build_index: bad inputs never stop a build, duplicates stored once, exact kNN, datasets corpora."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from index_corpora import exact_search, noise_image, write_good_images

from index import PrivateIndex, build_index, load_encoder
from index.errors import IndexInputError, StaleShardError
from index.sources import content_id


def test_messy_folder_builds_and_lists_every_skip(tmp_path: Path, tiny_model: str, messy_corpus) -> None:
    folder, expected = messy_corpus
    report = build_index(
        folder, tmp_path / "ix", model=tiny_model, batch_size=4, progress=False, max_pixels=10_000
    )
    ok = sum(1 for v in expected.values() if v == "ok")
    bad = {name: reason for name, reason in expected.items() if reason != "ok"}
    info = report.to_dict()
    assert info == PrivateIndex.open(tmp_path / "ix").info()
    assert info["records"] == 10 + ok  # the bmp copy of img003 is a duplicate
    assert report.duplicates == 1 and report.skipped == len(bad) and report.encoded == 10 + ok
    assert (
        info["dim"] == 16
        and info["index_type"] == "flat"
        and info["shards"] == {"default": {"records": 10 + ok, "skipped": len(bad), "empty": False, "storage": "float32"}}
    )
    skipped = {Path(s["source"]).name: s["reason"] for s in info["skipped"]}
    assert set(skipped) == set(bad)
    for name, fragment in bad.items():
        assert fragment in skipped[name]


def test_duplicates_are_stored_once_and_aliases_are_kept(tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    for name in ("a.png", "b.bmp", "c.png"):
        noise_image(5).save(folder / name)
    noise_image(6).save(folder / "d.png")
    report = build_index(folder, tmp_path / "ix", model=tiny_model, progress=False)
    assert report.added == 2 and report.duplicates == 2 and report.encoded == 2
    shard = PrivateIndex.open(tmp_path / "ix").shard("default")
    assert sorted(shard.ids.tolist()) == sorted([content_id(noise_image(5)), content_id(noise_image(6))])


def test_exact_knn_equals_numpy_brute_force(tmp_path: Path, tiny_model: str) -> None:
    write_good_images(tmp_path / "a", 30)
    write_good_images(tmp_path / "b", 20, start=100)
    build_index(tmp_path / "a", tmp_path / "ix", shard="a", model=tiny_model, progress=False)
    build_index(tmp_path / "b", tmp_path / "ix", shard="b", progress=False)  # the index's own encoder
    idx = PrivateIndex.open(tmp_path / "ix")
    ids = np.concatenate([s.ids for s in idx.shards()])
    emb = np.concatenate([s.embeddings for s in idx.shards()])
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(20, 16)).astype(np.float32)  # >= 16 queries: the BLAS path
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    queries = np.concatenate([queries, idx.load_encoder().encode_text(["a photo", "noise"])])
    scores, got = exact_search(idx.shards(), queries, 10)
    brute = emb @ queries.T
    for j in range(len(queries)):
        order = np.argsort(-brute[:, j], kind="stable")[:10]
        assert got[j].tolist() == ids[order].tolist()
        np.testing.assert_allclose(scores[j], brute[order, j], rtol=1e-5, atol=1e-6)
    shard = idx.shard("a")  # the raw faiss index agrees too, and ids/embeddings stay positionally aligned
    _, raw = shard.faiss_index.search(queries, 5)
    order = np.argsort(-(shard.embeddings @ queries.T), axis=0)[:5].T
    assert raw.tolist() == shard.ids[order].tolist()
    np.testing.assert_array_equal(shard.rows(np.array([3, 0, 7])), shard.embeddings[[3, 0, 7]])
    np.testing.assert_array_equal(shard.ids_at(np.array([3, 0, 7])), shard.ids[[3, 0, 7]])
    np.testing.assert_allclose(
        shard.score(queries[0], np.array([3, 0, 7])), shard.embeddings[[3, 0, 7]] @ queries[0], rtol=1e-5, atol=1e-6
    )
    _, few = exact_search(idx.shards(), queries[:1], 80)  # fewer than k records: padded with -1
    assert (few[0, 50:] == -1).all() and set(few[0, :50].tolist()) == set(ids.tolist())


def test_positions_outside_the_shard_are_refused(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    shard = PrivateIndex.open(tmp_path / "ix").shard("default")
    for call in (shard.rows, shard.ids_at, lambda p: shard.score(shard.rows([0])[0], p)):
        with pytest.raises(IndexInputError, match=r"positions must lie in \[0, 24\)") as err:
            call(np.array([0, 24]))
        assert str(shard.ids[0]) not in str(err.value)
    np.testing.assert_array_equal(shard.restrict(shard.rows([0])[0], np.arange(24)), np.arange(24))  # flat


def test_datasets_corpora_build(tmp_path: Path, tiny_model: str) -> None:
    images = [noise_image(300 + i) for i in range(6)] + [noise_image(300)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": images, "label": list(range(7))}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select(range(3, 7))}).save_to_disk(
        str(tmp_path / "dict")
    )
    ds.to_parquet(str(tmp_path / "c.parquet"))
    for name in ("saved", "dict", "c.parquet"):
        report = build_index(tmp_path / name, tmp_path / f"ix-{name}", model=tiny_model, progress=False)
        assert report.added == 6 and report.duplicates == 1, name
    rows = PrivateIndex.open(tmp_path / "ix-dict").remove(sources=[str(tmp_path / "dict") + "#test[0]"])
    assert rows.removed == 1 and rows.shards == {"default": 1}


def test_build_refuses_bad_arguments(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    with pytest.raises(IndexInputError, match="shard name"):
        build_index(corpus, tmp_path / "ix", shard="../x", model=tiny_model, progress=False)
    with pytest.raises(IndexInputError, match="--batch-size"):
        build_index(corpus, tmp_path / "ix", batch_size=0, model=tiny_model, progress=False)
    with pytest.raises(IndexInputError, match="does not exist"):
        build_index(tmp_path / "nope", tmp_path / "ix", model=tiny_model, progress=False)
    with pytest.raises(IndexInputError, match="never downloads"):
        build_index(corpus, tmp_path / "ix", model=f"local-dir:{tmp_path / 'no-model'}", progress=False)
    assert not (tmp_path / "ix").exists()  # nothing is created before the arguments are validated


def test_rebuild_replaces_the_shard_and_reuses_embeddings(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    first = PrivateIndex.open(tmp_path / "ix", mmap=True).shard("default")  # mapped: survives the rewrite
    for path in sorted(corpus.rglob("*.png"))[:4]:
        path.unlink()
    report = build_index(corpus, tmp_path / "ix", progress=False)
    assert report.encoded == 0 and report.reused == 20 and report.info["records"] == 20
    assert report.new_ids.size == 0 and report.dropped_ids.size == 4  # the 4 deleted images left the shard
    again = PrivateIndex.open(tmp_path / "ix").shard("default")
    keep = np.isin(first.ids, again.ids)
    rows_of = {int(i): p for p, i in enumerate(again.ids)}
    np.testing.assert_array_equal(first.embeddings[keep], again.rows([rows_of[int(i)] for i in first.ids[keep]]))
    stale = PrivateIndex.open(tmp_path / "ix").shard("default")  # lazy view of a generation that goes away
    PrivateIndex.open(tmp_path / "ix").remove(ids=[int(again.ids[0])])
    with pytest.raises(StaleShardError, match="reopen"):
        _ = stale.embeddings


def test_encoder_outputs_unit_float32_rows(tiny_model: str) -> None:
    enc = load_encoder(tiny_model, num_threads=1)
    images = enc.encode_images([noise_image(1), noise_image(2).convert("L")], batch_size=1)
    texts = enc.encode_text(["a cat", "a dog", "x"])
    assert images.shape == (2, 16) and texts.shape == (3, 16) and enc.dim == 16
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([images, texts]), axis=1), 1, rtol=1e-5)
    again = load_encoder(tiny_model)
    assert again.sha256 == enc.sha256 and len(enc.sha256) == 64
    np.testing.assert_allclose(again.encode_images([noise_image(1)]), images[:1], rtol=1e-5, atol=1e-6)
