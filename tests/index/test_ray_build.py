"""``--engine ray`` (issue 14): encoding on Ray Data gives the local build's ids, metadata, skips and embeddings.

Ray runs locally (``ray.init(num_cpus=2)``), no cluster. Skipped when Ray (the ``scale`` extra) is absent.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from index_corpora import write_bad_and_odd_files, write_good_images

from index import IndexInputError, PrivateIndex, build_index


def _corpus(folder: Path) -> Path:
    write_good_images(folder, 23)
    write_bad_and_odd_files(folder)
    shutil.copy(folder / "img000.png", folder / "copy_of_000.png")  # a duplicate: an alias, stored once
    return folder


def _same_content(local: PrivateIndex, remote: PrivateIndex) -> None:
    a, b = local.shard("default"), remote.shard("default")
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.metadata() == b.metadata()
    assert local.info()["skipped"] == remote.info()["skipped"]
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-6, rtol=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_engine_equals_local_engine(ray_local, tmp_path: Path, workers: int) -> None:
    source = _corpus(tmp_path / "src")
    local = build_index(source, tmp_path / "local", progress=False, num_threads=1, batch_size=8)
    report = build_index(
        source, tmp_path / "ray", progress=False, num_threads=1, batch_size=8, engine="ray", workers=workers
    )
    assert local.duplicates >= 1 and local.skipped > 0
    counts = ("added", "encoded", "reused", "duplicates", "skipped")
    assert [getattr(report, c) for c in counts] == [getattr(local, c) for c in counts]
    _same_content(PrivateIndex.open(tmp_path / "local"), PrivateIndex.open(tmp_path / "ray"))


def test_ray_engine_resumes_from_checkpoints(ray_local, tmp_path: Path) -> None:
    """An interrupted local build's checkpointed batches are reused by the Ray engine (only the rest is encoded)."""
    source = _corpus(tmp_path / "src")
    build_index(source, tmp_path / "local", progress=False, num_threads=1, batch_size=8)

    class Stop(Exception):
        pass

    def stop_after_one(count: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        build_index(source, tmp_path / "ray", progress=False, num_threads=1, batch_size=8, on_batch=stop_after_one)
    report = build_index(source, tmp_path / "ray", progress=False, num_threads=1, batch_size=8, engine="ray")
    assert report.reused == 8 and report.encoded == report.added - 8
    _same_content(PrivateIndex.open(tmp_path / "local"), PrivateIndex.open(tmp_path / "ray"))


def test_ray_engine_without_ray_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(IndexInputError, match=r"pip install 'dprdm\[scale\]'") as err:
        build_index(_corpus(tmp_path / "src"), tmp_path / "ray", progress=False, engine="ray")
    assert "\n" not in str(err.value) and not (tmp_path / "ray").exists()
