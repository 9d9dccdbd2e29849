"""Crash safety: Ctrl-C, kill -9 or a failed commit leave the previous index intact; re-runs resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from index_corpora import write_good_images

from index import PrivateIndex, build_index, fs, store
from index.errors import IndexInputError


def _snapshot(index_dir: Path) -> dict[str, bytes]:
    """Bytes of every committed file (manifest + referenced generations)."""
    out = {}
    for path in sorted(index_dir.rglob("*")):
        if path.is_file() and "work" not in path.parts and path.name != ".lock":
            out[str(path.relative_to(index_dir))] = path.read_bytes()
    return out


def _interrupt_after(count: int):
    def on_batch(encoded: int) -> None:
        if encoded >= count:
            raise KeyboardInterrupt

    return on_batch


def test_ctrl_c_mid_build_then_resume_reuses_checkpoints(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    ix = tmp_path / "ix"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, ix, model=tiny_model, batch_size=4, progress=False, on_batch=_interrupt_after(8))
    with pytest.raises(IndexInputError, match="not a dprdm index"):
        PrivateIndex.open(ix)  # nothing was committed
    chunks = list((ix / "work").rglob("chunk-*.npz"))
    assert len(chunks) == 2
    assert all(os.stat(c).st_mode & 0o777 == 0o600 for c in chunks)
    report = build_index(corpus, ix, model=tiny_model, batch_size=4, progress=False)
    assert (report.encoded, report.reused, report.added) == (16, 8, 24)
    assert not (ix / "work").exists()  # checkpoints are dropped once the build commits
    clean = build_index(corpus, tmp_path / "clean", model=tiny_model, batch_size=4, progress=False)
    assert clean.encoded == 24
    a, b = PrivateIndex.open(ix).shard("default"), PrivateIndex.open(tmp_path / "clean").shard("default")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-6, atol=1e-7)


def test_interrupted_rebuild_leaves_the_previous_index_intact(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    ix = tmp_path / "ix"
    build_index(corpus, ix, model=tiny_model, progress=False)
    before = _snapshot(ix)
    info = PrivateIndex.open(ix).info()
    write_good_images(tmp_path / "more", 12, start=500)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "more", ix, batch_size=4, progress=False, on_batch=_interrupt_after(4))
    assert _snapshot(ix) == before and PrivateIndex.open(ix).info() == info
    report = build_index(tmp_path / "more", ix, batch_size=4, progress=False)
    assert report.encoded == 8 and report.reused == 4 and report.info["records"] == 12


def test_kill_9_mid_build_leaves_the_index_intact_and_resumes(
    tmp_path: Path, tiny_model: str, corpus: Path
) -> None:
    ix = tmp_path / "ix"
    build_index(corpus, ix, shard="first", model=tiny_model, progress=False)
    before = _snapshot(ix)
    write_good_images(tmp_path / "more", 16, start=700)
    child = textwrap.dedent(
        """
        import os, signal, sys
        from index import build_index

        def on_batch(encoded):
            if encoded >= 8:
                os.kill(os.getpid(), signal.SIGKILL)

        build_index(sys.argv[1], sys.argv[2], shard="second", batch_size=4, progress=False, on_batch=on_batch)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "more"), str(ix)], env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(ix) == before
    assert PrivateIndex.open(ix).shard_names == ["first"]
    report = build_index(tmp_path / "more", ix, shard="second", batch_size=4, progress=False)
    assert report.encoded == 8 and report.reused == 8
    assert PrivateIndex.open(ix).info()["shards"]["second"]["records"] == 16


def test_failed_commit_keeps_the_old_manifest_and_cleans_up_later(
    tmp_path: Path, tiny_model: str, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix = tmp_path / "ix"
    build_index(corpus, ix, model=tiny_model, progress=False)
    before = _snapshot(ix)
    real = fs.atomic_write_json

    def crash_on_top_manifest(path: Path, payload: dict) -> None:
        if path == ix / store.MANIFEST:
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(fs, "atomic_write_json", crash_on_top_manifest)
    write_good_images(tmp_path / "more", 4, start=900)
    with pytest.raises(OSError, match="No space"):
        build_index(tmp_path / "more", ix, shard="more", progress=False)
    monkeypatch.undo()
    assert PrivateIndex.open(ix).shard_names == ["default"]
    assert len(list((ix / "shards").iterdir())) == 2  # the orphan generation is never referenced ...
    build_index(tmp_path / "more", ix, shard="more", progress=False)
    assert len(list((ix / "shards").iterdir())) == 2  # ... and is deleted by the next write
    assert {k: v for k, v in _snapshot(ix).items() if "default." in k} == {
        k: v for k, v in before.items() if "default." in k
    }
