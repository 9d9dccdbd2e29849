"""Issue 9/15 library parts: row checks, no private copy outside the index, ledger binding, commit hooks,
drop_shard, records listing, remove reporting unmatched selectors, empty shards, re-pointing the encoder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from index_corpora import noise_image, write_good_images

from index import LedgerBindingError, PrivateIndex, build_index
from index.errors import IndexCorruptError, IndexInputError
from index.sources import content_id
from index.store import file_sha256


@pytest.fixture
def built(tmp_path: Path, tiny_model: str, corpus: Path) -> Path:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    return tmp_path / "ix"


def _shard_dir(index_dir: Path, shard: str = "default") -> Path:
    return index_dir / json.loads((index_dir / "manifest.json").read_text())["shards"][shard]["dir"]


def _state(index_dir: Path) -> tuple[bytes, list[str]]:
    """The commit point and every committed file (resume checkpoints under work/ are a cache a failed build keeps)."""
    files = sorted(
        str(p.relative_to(index_dir))
        for p in index_dir.rglob("*")
        if p.is_file() and p.name != ".lock" and p.relative_to(index_dir).parts[0] != "work"
    )
    return (index_dir / "manifest.json").read_bytes(), files


# ----------------------------------------------------------------------------------------- row checks


def _plant(index_dir: Path, row: np.ndarray) -> None:
    """Overwrite row 0 of embeddings.npy and update the shard manifest's sha256 so only the row check can object."""
    shard = _shard_dir(index_dir)
    emb = np.load(shard / "embeddings.npy")
    emb[0] = row
    with open(shard / "embeddings.npy", "wb") as handle:
        np.save(handle, emb)
    manifest = json.loads((shard / "manifest.json").read_text())
    manifest["files"]["embeddings.npy"] = {
        "size": (shard / "embeddings.npy").stat().st_size,
        "sha256": file_sha256(shard / "embeddings.npy"),
    }
    (shard / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("mmap", [False, True], ids=["in-memory", "mmap"])
@pytest.mark.parametrize(
    "row", [np.full(16, 0.5, np.float32), np.full(16, np.nan, np.float32)], ids=["norm-2", "nan"]
)
def test_a_stored_row_that_is_not_a_finite_unit_vector_is_refused_at_load(
    built: Path, row: np.ndarray, mmap: bool
) -> None:
    _plant(built, row)
    with pytest.raises(IndexCorruptError, match=r"embeddings\.npy' holds rows that are not finite unit vectors; rebuild"):
        PrivateIndex.open(built, mmap=mmap).shard("default").load()  # what the pipeline calls before any charge


def test_rows_are_checked_when_a_generation_is_written(
    built: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import index.ingest

    real = index.ingest.ingest

    def broken(*args, **kwargs):
        content, stats = real(*args, **kwargs)
        content.embeddings[0] *= 2.0
        return content, stats

    monkeypatch.setattr("index.build.ingest", broken)
    before = _state(built)
    write_good_images(tmp_path / "more", 2, start=700)
    with pytest.raises(IndexCorruptError, match="not finite unit vectors"):
        PrivateIndex.open(built).add(tmp_path / "more")
    assert _state(built) == before


# ----------------------------------------------------------------------------------------- no copy outside


def test_parquet_and_arrow_builds_leave_no_file_outside_the_index(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    import pyarrow as pa

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [noise_image(500 + i) for i in range(4)], "label": [0, 1, 2, 3]}, features=features)
    sources = tmp_path / "sources"
    sources.mkdir()
    ds.to_parquet(str(sources / "c.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    shutil.copy(next((tmp_path / "saved").glob("*.arrow")), sources / "stream.arrow")  # IPC stream (datasets)
    with pa.OSFile(str(sources / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, ds.data.table.schema) as writer:
        writer.write_table(ds.data.table)  # IPC file format
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    for var, value in {"HOME": home, "HF_HOME": home / "hf", "HF_DATASETS_CACHE": home / "hf" / "datasets",
                       "XDG_CACHE_HOME": home / ".cache", "TMPDIR": tmp}.items():  # fmt: skip
        monkeypatch.setenv(var, str(value))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    want = {content_id(noise_image(500 + i)) for i in range(4)}
    for name in ("c.parquet", "stream.arrow", "file.arrow"):
        report = build_index(sources / name, tmp_path / f"ix-{name}", model=tiny_model, progress=False)
        assert report.added == 4 and set(PrivateIndex.open(tmp_path / f"ix-{name}").shard("default").ids) == want
    leftovers = [p for root in (home, tmp) for p in root.rglob("*")]
    assert leftovers == []
    assert sorted(p.name for p in sources.iterdir()) == ["c.parquet", "file.arrow", "stream.arrow"]


# ----------------------------------------------------------------------------------------- ledger binding


def test_an_index_is_bound_to_exactly_one_ledger(built: Path, tmp_path: Path) -> None:
    idx = PrivateIndex.open(built)
    assert idx.ledger_binding is None and idx.info()["ledger"] is None
    idx.bind_ledger("a" * 32, built / "budget.sqlite")
    assert idx.ledger_binding == {"id": "a" * 32, "location": "budget.sqlite"}  # relative inside the index
    idx.bind_ledger("a" * 32, tmp_path / "moved.sqlite")  # same ledger, new place: the location follows
    assert PrivateIndex.open(built).ledger_binding == {"id": "a" * 32, "location": str(tmp_path / "moved.sqlite")}
    before = _state(built)
    with pytest.raises(LedgerBindingError, match="an index has exactly one ledger") as err:
        PrivateIndex.open(built).bind_ledger("b" * 32, tmp_path / "fresh.sqlite")
    assert err.value.exit_code == 3 and _state(built) == before
    idx.bind_ledger("a" * 32, "postgresql://db/ledger")
    assert idx.ledger_binding["location"] == "postgresql://db/ledger"
    write_good_images(tmp_path / "more", 2, start=800)
    idx.add(tmp_path / "more")  # every later commit keeps the binding
    assert PrivateIndex.open(built).ledger_binding["id"] == "a" * 32
    with pytest.raises(IndexInputError, match="read-only"):
        PrivateIndex.open(built, mmap=True).bind_ledger("a" * 32, "x")


def test_a_damaged_ledger_binding_is_refused(built: Path) -> None:
    top = json.loads((built / "manifest.json").read_text())
    top["ledger"] = {"id": 5}
    (built / "manifest.json").write_text(json.dumps(top))
    with pytest.raises(IndexCorruptError, match="ledger binding"):
        PrivateIndex.open(built)


# ----------------------------------------------------------------------------------------- commit hooks


def test_build_and_add_hooks_receive_the_ids_new_to_the_shard(tmp_path: Path, tiny_model: str) -> None:
    calls = []
    write_good_images(tmp_path / "a", 5)
    build_index(tmp_path / "a", tmp_path / "ix", model=tiny_model, progress=False,
                before_commit=lambda shard, ids: calls.append((shard, sorted(ids.tolist()))))  # fmt: skip
    assert calls == [("default", sorted(content_id(noise_image(i)) for i in range(5)))]
    write_good_images(tmp_path / "b", 4, start=3)  # images 3 and 4 are already stored
    calls.clear()
    report = PrivateIndex.open(tmp_path / "ix").add(
        tmp_path / "b", before_commit=lambda shard, ids: calls.append((shard, sorted(ids.tolist())))
    )
    assert calls == [("default", sorted(content_id(noise_image(i)) for i in (5, 6)))]
    assert sorted(report.new_ids.tolist()) == calls[0][1]


def test_remove_and_drop_shard_hooks_receive_the_ids_that_leave(tmp_path: Path, tiny_model: str) -> None:
    write_good_images(tmp_path / "a", 4)
    write_good_images(tmp_path / "b", 3, start=10)
    build_index(tmp_path / "a", tmp_path / "ix", shard="a", model=tiny_model, progress=False)
    build_index(tmp_path / "b", tmp_path / "ix", shard="b", progress=False)
    idx = PrivateIndex.open(tmp_path / "ix")
    calls = []
    hook = lambda shard, ids: calls.append((shard, sorted(ids.tolist())))  # noqa: E731
    gone = [content_id(noise_image(1)), content_id(noise_image(10))]
    report = idx.remove(ids=gone, before_commit=hook)
    assert sorted(calls) == [("a", [gone[0]]), ("b", [gone[1]])] and report.shards == {"a": 1, "b": 1}
    calls.clear()
    assert idx.drop_shard("b", before_commit=hook) == 2
    assert calls == [("b", sorted(content_id(noise_image(i)) for i in (11, 12)))]
    assert idx.shard_names == ["a"] and PrivateIndex.open(tmp_path / "ix").shard_names == ["a"]
    assert [p.name.split(".")[0] for p in (tmp_path / "ix" / "shards").iterdir()] == ["a"]  # files gone too
    with pytest.raises(IndexInputError, match="no shard 'b'"):
        idx.drop_shard("b")


def _refuse(shard: str, ids: np.ndarray) -> None:
    raise RuntimeError("budget refused")


@pytest.mark.parametrize("operation", ["build", "add", "remove", "drop-shard"])
def test_a_raising_hook_leaves_the_index_unchanged(built: Path, corpus: Path, tmp_path: Path, operation: str) -> None:
    write_good_images(tmp_path / "more", 3, start=600)
    before = _state(built)
    idx = PrivateIndex.open(built)
    with pytest.raises(RuntimeError, match="budget refused"):
        if operation == "build":
            build_index(tmp_path / "more", built, shard="new", progress=False, before_commit=_refuse)
        elif operation == "add":
            idx.add(tmp_path / "more", before_commit=_refuse)
        elif operation == "remove":
            idx.remove(sources=[str(corpus / "nested")], before_commit=_refuse)
        else:
            idx.drop_shard("default", before_commit=_refuse)
    assert _state(built) == before
    assert PrivateIndex.open(built).info()["records"] == 24 and idx.info()["records"] == 24


# ----------------------------------------------------------------------------------------- issue 15 parts


def test_records_list_every_stored_source_with_its_id(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    noise_image(0).save(corpus / "copy_of_0.bmp")
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    idx = PrivateIndex.open(tmp_path / "ix", mmap=True)
    listed = list(idx.records())
    assert len(listed) == 25 and {s for s, _, _ in listed} == {"default"}
    by_source = {Path(source).name: rid for _, rid, source in listed}
    assert by_source["copy_of_0.bmp"] == by_source["img000.png"] == content_id(noise_image(0))
    assert {rid for _, rid, _ in listed} == set(idx.shard("default").ids.tolist())
    assert list(idx.records("default")) == listed
    with pytest.raises(IndexInputError, match="no shard 'x'"):
        list(idx.records("x"))


def test_remove_names_the_selectors_that_matched_nothing(built: Path, corpus: Path) -> None:
    idx = PrivateIndex.open(built)
    before = _state(built)
    with pytest.raises(IndexInputError, match=r"no record matches --id 7, 8; --source '.*nowhere'; .*dprdm index ls"):
        idx.remove(ids=[7, 8], sources=[str(corpus / "nowhere")])
    assert _state(built) == before
    real = content_id(noise_image(0))
    report = idx.remove(ids=[real, 7], sources=[str(corpus / "nowhere")])
    assert report.removed == 1 and report.unmatched_ids == (7,) and report.unmatched_sources == (str(corpus / "nowhere"),)
    assert report.to_dict() == {
        "removed": 1, "shards": {"default": 1}, "unmatched_ids": [7], "unmatched_sources": [str(corpus / "nowhere")],
    }  # fmt: skip


def test_a_shard_of_only_duplicates_is_allowed_and_marked_empty(tmp_path: Path, tiny_model: str) -> None:
    write_good_images(tmp_path / "a", 4)
    build_index(tmp_path / "a", tmp_path / "ix", shard="a", model=tiny_model, progress=False)
    report = build_index(tmp_path / "a", tmp_path / "ix", shard="b", progress=False)
    assert report.added == 0 and report.duplicates == 4
    shards = PrivateIndex.open(tmp_path / "ix").info()["shards"]
    assert shards["b"] == {"records": 0, "skipped": 0, "empty": True, "storage": "float32"} and shards["a"]["empty"] is False


def test_set_encoder_repoints_a_moved_model_and_checks_its_hash(
    tmp_path: Path, tiny_model: str, other_model: str, corpus: Path
) -> None:
    from index_corpora import save_tiny_clip

    model_dir = save_tiny_clip(tmp_path / "model", seed=0)
    build_index(corpus, tmp_path / "ix", model=f"local-dir:{model_dir}", progress=False)
    moved = tmp_path / "moved"
    shutil.move(model_dir, moved)
    idx = PrivateIndex.open(tmp_path / "ix")
    with pytest.raises(IndexInputError, match="re-point the index with 'dprdm index set-encoder'") as err:
        idx.load_encoder()
    assert "omit --model" not in str(err.value) and "pass --model" not in str(err.value)
    before = _state(tmp_path / "ix")
    with pytest.raises(IndexInputError, match="is not the encoder of index"):
        idx.set_encoder(other_model)
    assert _state(tmp_path / "ix") == before
    idx.set_encoder(f"local-dir:{moved}")
    reopened = PrivateIndex.open(tmp_path / "ix")
    assert reopened.manifest["encoder"]["model"] == f"local-dir:{moved}"
    assert reopened.load_encoder().sha256 == reopened.manifest["encoder"]["sha256"]
    write_good_images(tmp_path / "more", 2, start=900)
    assert reopened.add(tmp_path / "more").added == 2  # the moved encoder is used from now on


def test_index_hints_name_only_options_that_exist() -> None:
    package = Path(__file__).resolve().parents[2] / "index"
    text = "\n".join(p.read_text() for p in package.glob("*.py"))
    assert "omit --model" not in text
    assert "pass --model local-dir" not in text


def test_fs_atomic_write_is_private_and_replaces(tmp_path: Path) -> None:
    from index import fs

    fs.atomic_write_bytes(tmp_path / "x", b"one")
    fs.atomic_write_json(tmp_path / "x", {"b": 1, "a": 2})
    assert (tmp_path / "x").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o600
    fs.atomic_write_bytes(tmp_path / "y", b"", mode=0o644)
    assert (tmp_path / "y").stat().st_mode & 0o777 == 0o644
    assert fs.make_private_dir(tmp_path / "d" / "e").stat().st_mode & 0o777 == 0o700
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # no temp file is left behind
