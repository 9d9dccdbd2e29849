"""Shard file checksums (same-size damage is refused on plain and mmap opens and by verify) and '~user' expansion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from index_corpora import exact_search
from typer.testing import CliRunner

from index import PrivateIndex, build_index, expand_user, load_encoder
from index.errors import IndexCorruptError, IndexInputError
from index.store import FORMAT_VERSION, file_sha256
from pipeline.cli import app

DATA_FILES = ("index.faiss", "embeddings.npy", "ids.npy")


@pytest.fixture
def built(tmp_path: Path, tiny_model: str, corpus: Path) -> Path:
    build_index(corpus, tmp_path / "ix", model=tiny_model, progress=False)
    return tmp_path / "ix"


def _shard_dir(index_dir: Path) -> Path:
    return index_dir / json.loads((index_dir / "manifest.json").read_text())["shards"]["default"]["dir"]


def _flip_middle(path: Path) -> None:
    """Same size, valid header: 16 bytes in the middle of the file set to 0x7f."""
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + b"\x7f" * 16 + data[middle + 16 :])


def test_manifest_records_size_and_sha256_of_every_shard_file(built: Path) -> None:
    shard_dir = _shard_dir(built)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert set(manifest["files"]) == {*DATA_FILES, "metadata.sqlite"}
    for name, entry in manifest["files"].items():
        assert entry == {"size": (shard_dir / name).stat().st_size, "sha256": file_sha256(shard_dir / name)}


@pytest.mark.parametrize("name", DATA_FILES)
def test_same_size_damage_is_refused_when_the_file_is_loaded(built: Path, name: str) -> None:
    before = PrivateIndex.open(built).shard("default").load()  # loaded before the damage: cached, unaffected
    path = _shard_dir(built) / name
    _flip_middle(path)
    damaged = path.read_bytes()
    shard = PrivateIndex.open(built).shard("default")  # open checks sizes only; loading checks content
    with pytest.raises(IndexCorruptError, match="checksum mismatch") as err:
        shard.load()
    message = str(err.value)
    assert "\n" not in message and name in message and "dprdm index build" in message and "backup" in message
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        PrivateIndex.open(built, mmap=True)  # mmap opens map (and so verify) every file at once
    assert path.read_bytes() == damaged  # nothing rewritten
    assert before.num_records == len(before.ids)


@pytest.mark.parametrize("name", [*DATA_FILES, "metadata.sqlite"])
def test_verify_finds_same_size_damage_without_loading(built: Path, name: str) -> None:
    assert PrivateIndex.open(built).verify().info() == PrivateIndex.open(built, mmap=True).info()
    _flip_middle(_shard_dir(built) / name)
    with pytest.raises(IndexCorruptError, match=f"{name}.*checksum mismatch"):
        PrivateIndex.open(built).verify()


def test_damaged_metadata_is_refused_before_a_remove_reads_it(built: Path) -> None:
    _flip_middle(_shard_dir(built) / "metadata.sqlite")
    with pytest.raises(IndexCorruptError, match="metadata.sqlite.*checksum mismatch"):
        PrivateIndex.open(built).remove(ids=[1])


def test_a_verified_shard_answers_like_before(built: Path) -> None:
    plain, mapped = PrivateIndex.open(built), PrivateIndex.open(built, mmap=True)
    queries = np.asarray(plain.shard("default").embeddings[:3])
    np.testing.assert_array_equal(
        exact_search(plain.shards(), queries, 5)[1], exact_search(mapped.shards(), queries, 5)[1]
    )


def test_a_manifest_without_checksums_is_refused(built: Path) -> None:
    manifest_path = _shard_dir(built) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # the format-1 shape: sizes only
    manifest["files"] = {name: entry["size"] for name, entry in manifest["files"].items()}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="lacks the size and sha256"):
        PrivateIndex.open(built)


def test_unknown_user_in_a_path_is_bad_input_not_a_crash(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    message = "cannot expand '~nosuchuser/x': no such user's home directory; give an absolute path"
    with pytest.raises(IndexInputError) as err:
        expand_user("~nosuchuser/x")
    assert str(err.value) == message
    assert expand_user("~") == Path.home()
    for call in (
        lambda: PrivateIndex.open("~nosuchuser/x"),
        lambda: build_index(corpus, "~nosuchuser/x", model=tiny_model, progress=False),
        lambda: build_index("~nosuchuser/x", tmp_path / "ix", model=tiny_model, progress=False),
        lambda: build_index(
            corpus,
            tmp_path / "ix",
            model=tiny_model,
            public_train="~nosuchuser/x",
            index_type="ivf-flat",
            progress=False,
        ),
        lambda: load_encoder("local-dir:~nosuchuser/x"),
    ):
        with pytest.raises(IndexInputError, match="no such user"):
            call()
    result = CliRunner().invoke(app, ["index", "info", "--index", "~nosuchuser/x"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"Error: {message}"], (
        result.stderr
    )
