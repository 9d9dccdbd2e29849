"""Index-type policy: only exact flat, or IVF-Flat with a quantiser trained on PUBLIC embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from index_corpora import exact_search

from index import PrivateIndex, build_index, is_dp_safe
from index.errors import IndexInputError, UnsafeIndexError
from index.safety import IndexKind, resolve_index_type
from index.store import file_sha256

UNSAFE = [
    "hnsw",
    "HNSW32",
    "HNSW32,Flat",
    "NSG32,Flat",
    "PQ8",
    "IVF64,PQ8",
    "OPQ8,IVF64,PQ8",
    "IVF64,SQ8",
    "RQ4x8",
]


@pytest.mark.parametrize("index_type", UNSAFE, ids=UNSAFE)
def test_unsafe_types_are_refused_with_the_sensitivity_reason(
    index_type: str, tmp_path: Path, corpus: Path
) -> None:
    with pytest.raises(UnsafeIndexError, match="sensitivity 2/k") as err:
        build_index(corpus, tmp_path / "ix", index_type=index_type, progress=False)
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert not (tmp_path / "ix").exists()  # refused before anything is created
    assert not is_dp_safe(index_type, public_train=True)


def test_ivf_needs_public_training_data(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(UnsafeIndexError, match="--public-train"):
        build_index(corpus, tmp_path / "ix", index_type="ivf-flat", progress=False)
    assert resolve_index_type("IVF64,Flat", public_train=True) is IndexKind.IVF_FLAT
    assert resolve_index_type("IDMap2,Flat", public_train=False) is IndexKind.FLAT
    with pytest.raises(IndexInputError, match="unknown index type"):
        resolve_index_type("LSH", public_train=False)


def test_ivf_flat_with_public_quantiser(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    rng = np.random.default_rng(1)
    public = rng.normal(size=(400, 16)).astype(np.float32)
    np.save(tmp_path / "public.npy", public)
    report = build_index(
        corpus, tmp_path / "ix", model=tiny_model, index_type="ivf-flat", public_train=tmp_path / "public.npy",
        progress=False,
    )  # fmt: skip
    sha = hashlib.sha256((tmp_path / "public.npy").read_bytes()).hexdigest()
    assert report.info["index_type"] == "ivf-flat" and report.info["quantizer"] == f"public:{sha}"
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["quantizer"]["provenance"] == f"public:{sha}" and manifest["faiss"].startswith("IVF")
    idx = PrivateIndex.open(tmp_path / "ix")
    shard = idx.shard("default")
    ivf = faiss.extract_index_ivf(shard.faiss_index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    stored = faiss.read_index(
        str(tmp_path / "ix" / "quantizer.faiss")
    )  # keep a reference: it owns the C++ object
    trained = faiss.extract_index_ivf(stored)
    np.testing.assert_array_equal(centroids, trained.quantizer.reconstruct_n(0, trained.nlist))  # public only
    q = np.ascontiguousarray(shard.embeddings[:4])
    # The shard primitives restrict to the lists faiss probes (manifest nprobe) and score exactly inside them.
    _, got = exact_search([shard], q, 5)
    _, faiss_got = shard.faiss_index.search(q, 5)
    np.testing.assert_array_equal(got, faiss_got)
    lists = np.empty(shard.num_records, np.int64)  # every row's list is the one faiss stored it in
    position = {int(i): p for p, i in enumerate(shard.ids)}
    for lst in range(ivf.nlist):
        for label in faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst)):
            lists[position[int(label)]] = lst
    probed = ivf.quantizer.search(q[:1], ivf.nprobe)[1][0]
    np.testing.assert_array_equal(
        shard.restrict(q[0], np.arange(shard.num_records)), np.flatnonzero(np.isin(lists, probed))
    )
    everything = np.arange(shard.num_records)
    ivf.nprobe = ivf.nlist  # probing every list makes faiss exact: compare with numpy on all rows
    brute = shard.embeddings @ q.T
    _, all_lists = shard.faiss_index.search(q, 5)
    for j in range(4):
        assert all_lists[j].tolist() == shard.ids[np.argsort(-brute[:, j])[:5]].tolist()
        assert got[j, 0] == shard.ids_at(everything)[np.argmax(brute[:, j])]  # a row finds itself
    victim = int(got[0, 0])
    idx.remove(ids=[victim])
    assert victim not in exact_search(idx.shards(), q, 24)[1]
    mapped = PrivateIndex.open(tmp_path / "ix", mmap=True)
    assert mapped.info()["records"] == 23


def test_bad_public_training_files(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    np.save(tmp_path / "wrong_dim.npy", np.ones((100, 8), np.float32))
    with pytest.raises(IndexInputError, match=r"shape \(n, 16\)"):
        build_index(corpus, tmp_path / "ix", model=tiny_model, public_train=tmp_path / "wrong_dim.npy", index_type="ivf-flat", progress=False)  # fmt: skip
    assert not (tmp_path / "ix").exists()  # validated before anything is created
    with pytest.raises(IndexInputError, match="only used with --index-type ivf-flat"):
        build_index(
            corpus,
            tmp_path / "ix2",
            model=tiny_model,
            public_train=tmp_path / "wrong_dim.npy",
            progress=False,
        )


def test_a_swapped_in_hnsw_file_is_refused_on_load(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    top = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    shard_dir = tmp_path / "ix" / top["shards"]["default"]["dir"]
    emb = np.load(shard_dir / "embeddings.npy")
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(emb, np.load(shard_dir / "ids.npy"))
    faiss.write_index(hnsw, str(shard_dir / "index.faiss"))
    shard_manifest = json.loads((shard_dir / "manifest.json").read_text())
    shard_manifest["files"]["index.faiss"] = {  # a consistent manifest: only the safety check can refuse it
        "size": (shard_dir / "index.faiss").stat().st_size,
        "sha256": file_sha256(shard_dir / "index.faiss"),
    }
    (shard_dir / "manifest.json").write_text(json.dumps(shard_manifest))
    with pytest.raises(UnsafeIndexError, match="2/k"):
        PrivateIndex.open(tmp_path / "ix").shard("default").faiss_index  # noqa: B018
