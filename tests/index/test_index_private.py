"""PrivateIndex: add → remove → search, shards, mmap, manifest and encoder checks, corruption, permissions."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from index_corpora import exact_search, noise_image, write_good_images

from index import PrivateIndex, build_index, load_encoder
from index.errors import IndexCorruptError, IndexInputError
from index.sources import content_id


@pytest.fixture
def built(tmp_path: Path, tiny_model: str, corpus: Path) -> Path:
    """A one-shard index over the 24-image corpus."""
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    return tmp_path / "ix"


def _all_sources(index_dir: Path) -> list[str]:
    out = []
    for db in index_dir.rglob("metadata.sqlite"):
        with sqlite3.connect(db) as conn:
            out += [
                s for (s,) in conn.execute("SELECT source FROM records UNION ALL SELECT source FROM aliases")
            ]
    return out


def test_add_then_remove_then_search_never_returns_removed(built: Path, tmp_path: Path) -> None:
    idx = PrivateIndex.open(built)
    write_good_images(tmp_path / "extra", 6, start=400)
    report = idx.add(tmp_path / "extra", shard="default")
    assert report.added == 6 and report.encoded == 6 and idx.info()["records"] == 30
    shard = idx.shard("default")
    victim = content_id(noise_image(402))
    own = shard.rows(np.flatnonzero(shard.ids == victim))
    _, top = exact_search(idx.shards(), own, 1)
    assert top[0, 0] == victim  # its own embedding finds it
    assert idx.remove(ids=[victim]).removed == 1
    for reopened in (idx, PrivateIndex.open(built), PrivateIndex.open(built, mmap=True)):
        assert reopened.info()["records"] == 29
        _, ids = exact_search(reopened.shards(), own, 100)
        assert victim not in ids and victim not in reopened.shard("default").ids
        assert not np.isin(victim, reopened.shard("default").ids_at(np.arange(29)))
    assert not any(s.endswith("img402.png") for s in _all_sources(built))
    for emb in built.rglob("*.npy"):  # the removed row is gone from every file on disk
        rows = np.load(emb)
        if rows.ndim == 2:
            assert not np.any(np.all(np.isclose(rows, own), axis=1))
    with pytest.raises(IndexInputError, match=f"no record matches --id {victim}"):
        idx.remove(ids=[victim])  # already gone: nothing matched is an input error, nothing is committed
    assert idx.info()["last_operation"]["op"] == "remove"


def test_remove_by_source_file_folder_and_duplicate_copy(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    noise_image(0).save(corpus / "copy_of_0.bmp")  # duplicate of corpus/img000.png
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    idx = PrivateIndex.open(tmp_path / "ix")
    assert idx.info()["records"] == 24
    assert idx.remove(sources=[str(corpus / "img002.png")]).removed == 1
    assert idx.remove(sources=[str(corpus / "copy_of_0.bmp")]).removed == 1  # any copy removes the picture
    assert content_id(noise_image(0)) not in idx.shard("default").ids
    assert idx.remove(sources=[str(corpus / "nested")]).removed == 12  # a folder removes everything under it
    assert idx.info()["records"] == 10
    with pytest.raises(IndexInputError, match="nothing to remove"):
        idx.remove()


def test_a_record_belongs_to_exactly_one_shard(tmp_path: Path, tiny_model: str) -> None:
    write_good_images(tmp_path / "a", 10)
    write_good_images(tmp_path / "b", 10, start=5)  # images 5..9 are also in a
    build_index(tmp_path / "a", tmp_path / "ix", shard="a", model=tiny_model, progress=False)
    report = build_index(tmp_path / "b", tmp_path / "ix", shard="b", progress=False)
    assert report.duplicates == 5 and report.added == 5
    idx = PrivateIndex.open(tmp_path / "ix")
    a, b = set(idx.shard("a").ids.tolist()), set(idx.shard("b").ids.tolist())
    assert not a & b and len(a | b) == 15
    _, only_b = exact_search(idx.shards(["b"]), idx.shard("b").embeddings, 3)
    assert set(only_b.ravel().tolist()) <= b
    with pytest.raises(IndexInputError, match="no shard 'c'"):
        idx.shard("c")


def test_mmap_open_is_read_only_and_searches_the_same(built: Path) -> None:
    plain, mapped = PrivateIndex.open(built), PrivateIndex.open(built, mmap=True)
    q = plain.shard("default").embeddings[:5]
    for a, b in zip(exact_search(plain.shards(), q, 4), exact_search(mapped.shards(), q, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    emb = mapped.shard("default").embeddings
    assert isinstance(emb, np.memmap) and not emb.flags.writeable
    assert not plain.shard("default").embeddings.flags.writeable
    with pytest.raises(IndexInputError, match="read-only"):
        mapped.remove(ids=[int(mapped.shard("default").ids[0])])
    with pytest.raises(IndexInputError, match="read-only"):
        mapped.add(built, shard="x")


def test_permissions_are_private(built: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):

        def stop(_: int) -> None:
            raise KeyboardInterrupt

        write_good_images(tmp_path / "more", 3, start=800)
        build_index(tmp_path / "more", built, shard="more", batch_size=1, progress=False, on_batch=stop)
    paths = [built, *built.rglob("*")]
    assert any("work" in p.parts for p in paths)  # checkpoints are covered too
    for path in paths:
        mode = os.stat(path).st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_encoder_mismatch_is_refused(built: Path, tmp_path: Path, other_model: str, tiny_model: str) -> None:
    with pytest.raises(IndexInputError, match="is not the encoder of index"):
        PrivateIndex.open(built, encoder=load_encoder(other_model))
    assert PrivateIndex.open(built, encoder=load_encoder(tiny_model)).dim == 16
    write_good_images(tmp_path / "more", 2, start=600)
    with pytest.raises(IndexInputError, match="is not the encoder of index"):
        build_index(tmp_path / "more", built, shard="x", model=other_model, progress=False)
    with pytest.raises(IndexInputError, match="index type is fixed"):
        build_index(tmp_path / "more", built, shard="x", index_type="flat", progress=False)


def test_changed_model_weights_are_detected_on_load_encoder(tmp_path: Path, corpus: Path) -> None:
    from index_corpora import save_tiny_clip

    model_dir = save_tiny_clip(tmp_path / "model", seed=3)
    build_index(corpus, tmp_path / "ix", model=f"local-dir:{model_dir}", progress=False)
    idx = PrivateIndex.open(tmp_path / "ix")
    assert idx.load_encoder().sha256 == idx.manifest["encoder"]["sha256"]
    save_tiny_clip(model_dir, seed=4)  # the model files change after the build
    with pytest.raises(IndexInputError, match="is not the encoder of index"):
        idx.load_encoder()


def _edit_json(path: Path, **changes: object) -> None:
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize(
    "damage",
    [
        "future_version",
        "garbage_manifest",
        "dim",
        "truncated_embeddings",
        "missing_shard_dir",
        "wrong_shard_encoder",
    ],
)
def test_damaged_indexes_are_refused(built: Path, damage: str) -> None:
    top = built / "manifest.json"
    shard_dir = built / json.loads(top.read_text())["shards"]["default"]["dir"]
    if damage == "future_version":
        _edit_json(top, format_version=99)
    elif damage == "garbage_manifest":
        top.write_bytes(b"\x00not json")
    elif damage == "dim":
        _edit_json(top, dim=17)
    elif damage == "truncated_embeddings":
        emb = shard_dir / "embeddings.npy"
        emb.write_bytes(emb.read_bytes()[:100])
    elif damage == "missing_shard_dir":
        os.rename(shard_dir, shard_dir.with_name("gone"))
    elif damage == "wrong_shard_encoder":
        _edit_json(shard_dir / "manifest.json", encoder={"sha256": "0" * 64})
    with pytest.raises(IndexCorruptError) as err:
        PrivateIndex.open(built).shard("default").embeddings  # noqa: B018
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_missing_models_fail_with_one_line_and_never_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(IndexInputError, match="never downloads"):
        load_encoder(f"local-dir:{tmp_path / 'nothing'}")
    import index.encoder

    monkeypatch.setattr(index.encoder, "DEFAULT_MODEL_DIR", tmp_path / "no-bundled-model")
    with pytest.raises(IndexInputError, match="bundled tiny encoder is missing"):
        load_encoder(None)
    with pytest.raises(IndexInputError, match="needs --pretrained"):
        load_encoder("ViT-B-32")
    with pytest.raises(IndexInputError, match="not in the local cache"):
        load_encoder("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(IndexInputError, match="hub"):
        load_encoder("hf-hub:org/model")


def test_name_plus_weights_file(tmp_path: Path) -> None:
    import open_clip
    import torch
    from index_corpora import TINY_CFG
    from safetensors.torch import save_file

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "dprdm-test-tiny.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(5)
    save_file(open_clip.CLIP(**TINY_CFG).state_dict(), str(tmp_path / "w.safetensors"))
    enc = load_encoder("dprdm-test-tiny", str(tmp_path / "w.safetensors"))
    assert enc.dim == 16 and enc.model_id.startswith("dprdm-test-tiny@")
    assert enc.spec.to_dict() == {"model": "dprdm-test-tiny", "pretrained": str(tmp_path / "w.safetensors")}


def test_a_second_writer_is_refused_while_one_holds_the_lock(built: Path, corpus: Path) -> None:
    from index import store

    with store.writer_lock(built):
        with pytest.raises(IndexInputError, match="being modified by another process"):
            build_index(corpus, built, shard="again", progress=False)
        with pytest.raises(IndexInputError, match="being modified by another process"):
            PrivateIndex.open(built).remove(ids=[1])
        assert PrivateIndex.open(built).info()["records"] == 24  # readers are never blocked


def test_an_emptied_shard_still_opens_searches_and_refills(built: Path, corpus: Path) -> None:
    idx = PrivateIndex.open(built)
    assert idx.remove(sources=[str(corpus)]).removed == 24
    shard = idx.shard("default")
    assert shard.num_records == 0 and shard.embeddings.shape == (0, 16)
    assert shard.rows(np.array([], dtype=np.int64)).shape == (0, 16)
    assert idx.info()["shards"]["default"]["empty"] is True
    scores, ids = exact_search(idx.shards(), np.ones((2, 16), np.float32) / 4, 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    report = idx.add(corpus, shard="default")
    assert report.encoded == 24 and idx.info()["records"] == 24  # removed embeddings were not kept anywhere
