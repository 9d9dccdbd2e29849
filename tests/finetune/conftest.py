"""Fixtures for the fine-tuning tests: a 200-record private index, a tiny decoder, a ledger with one scope.

The corpus is 200 digits (20 per class) of the bundled private half written as PNGs; the decoder is a randomly
initialised tiny UNet built from config (fine-tuning quality is not under test here, the DP path is).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from digit_folders import write_digit_classes
from finetune_testlib import PER_CLASS, tiny_unet

from accountant import Ledger
from index import PrivateIndex, build_index
from pipeline.decoders import TinyDecoder


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shard ('default') of 200 private digit PNGs (the session's pristine copy; tests copy it)."""
    root = tmp_path_factory.mktemp("ft")
    build_index(write_digit_classes(root / "pngs", range(10), PER_CLASS), root / "index", progress=False, num_threads=1)
    return root


@pytest.fixture()
def corpus(tmp_path: Path, corpus_index: Path) -> Path:
    """A per-test copy of corpus (``pngs/`` + ``index/``) whose index sources point at the copy's PNGs."""
    target = tmp_path / "corpus"
    shutil.copytree(corpus_index / "pngs", target / "pngs")
    build_index(target / "pngs", target / "index", progress=False, num_threads=1)
    return target


@pytest.fixture()
def shared_index(tmp_path: Path, corpus_index: Path) -> PrivateIndex:
    """A per-test copy of the pristine index (an index binds its one ledger, so tests never share one)."""
    return PrivateIndex.open(shutil.copytree(corpus_index / "index", tmp_path / "index"))


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory, corpus_index: Path) -> Path:
    from diffusers import DDIMScheduler

    dim = PrivateIndex.open(corpus_index / "index").dim
    folder = tmp_path_factory.mktemp("decoder") / "tiny"
    TinyDecoder(tiny_unet(dim), DDIMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return folder


@pytest.fixture()
def decoder(decoder_dir: Path) -> TinyDecoder:
    return TinyDecoder.from_pretrained(decoder_dir)


@pytest.fixture()
def ledger(shared_index: PrivateIndex) -> Ledger:
    """The index copy's own ledger with scope 'default' (epsilon 20, delta 1e-5, the demo-like query mechanism)."""
    ledger = Ledger(shared_index.path / "budget.sqlite")
    ledger.create_scope("default", epsilon=20.0, delta=1e-5, k=10, q=0.5, sigma=0.3, records=200)
    return ledger
