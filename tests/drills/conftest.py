"""Failure-drill fixtures: a tiny real index + ledger, a tiny decoder built from config, a fork server, counters.

The drills run the real code paths (``dprdm`` commands in-process, the real ledger and index files). Child
processes come from a ``forkserver`` that has already imported torch and the CLI, so a child starts in
~50 ms instead of paying the 5–8 s torch import; killing it with SIGKILL is a real ``kill -9``.

Counts (races run, kills survived, fuzz cases tried) are printed at the end of the run and written to
``$DPRDM_DRILL_COUNTS`` (default: ``<pytest basetemp>/drill_counts.json``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from drill_support import write_corpus

COUNTS: Counter = Counter()
_COUNTS_FILE: list[Path] = []


@pytest.fixture(scope="session")
def drill_counts(tmp_path_factory) -> Counter:
    """Session-wide counters; written as JSON when the session ends."""
    path = Path(os.environ.get("DPRDM_DRILL_COUNTS") or tmp_path_factory.getbasetemp() / "drill_counts.json")
    _COUNTS_FILE.append(path)
    yield COUNTS
    path.write_text(json.dumps(dict(sorted(COUNTS.items())), indent=2) + "\n")


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS:
        terminalreporter.write_sep("-", "failure-drill counts")
        for name, value in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name}: {value}")
        if _COUNTS_FILE:
            terminalreporter.write_line(f"(written to {_COUNTS_FILE[0]})")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """24 private images."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "private", 24, seed=1)


@pytest.fixture(scope="session")
def other_corpus(tmp_path_factory) -> Path:
    """16 different private images (a second version of the shard)."""
    return write_corpus(tmp_path_factory.mktemp("corpus_b") / "private", 16, seed=2)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, corpus) -> Path:
    """An index built once per session with the bundled tiny encoder (copy it before damaging it)."""
    from index import build_index

    path = tmp_path_factory.mktemp("built") / "idx"
    build_index(corpus, path, progress=False, num_threads=1)
    return path


@pytest.fixture
def index_dir(built_index, tmp_path) -> Path:
    """A private copy of the session index (modes preserved), without a ledger."""
    target = tmp_path / "idx"
    shutil.copytree(built_index, target)
    return target


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory, built_index) -> Path:
    """A tiny random-weight decoder built from config (fast; images are noise, which is all drills need)."""
    import torch
    from diffusers import DDIMScheduler

    from index import PrivateIndex
    from pipeline.decoders import TinyDecoder
    from pipeline.train.decoder import build_unet

    torch.manual_seed(0)
    dim = PrivateIndex.open(built_index).dim
    unet = build_unet(dim, block_out_channels=(8, 16), attention_head_dim=4)
    path = tmp_path_factory.mktemp("decoder") / "tiny"
    TinyDecoder(unet, DDIMScheduler(num_train_timesteps=50)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def forkserver():
    """A multiprocessing context whose children fork from a server that already imported the CLI."""
    # Python 3.11's fork server ignores the parent's sys.path while preloading (a failed preload is silently
    # skipped), so put this folder on PYTHONPATH for the server process it spawns.
    here = str(Path(__file__).resolve().parent)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = here if not saved else f"{here}{os.pathsep}{saved}"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["drill_preload", "drill_support"])
    yield ctx
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved
