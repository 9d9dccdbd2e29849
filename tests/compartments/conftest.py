"""Fixtures: a two-shard digit index (a = classes 0-4, b = 5-9, 10 per class), a random tiny decoder, a ledger."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
from digit_folders import write_digit_classes  # noqa: E402
from finetune_testlib import tiny_unet  # noqa: E402

from accountant import Ledger  # noqa: E402
from index import PrivateIndex, build_index  # noqa: E402
from pipeline.decoders import TinyDecoder  # noqa: E402

PER_CLASS = 10


@pytest.fixture(scope="session")
def two_shard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cdm")
    build_index(write_digit_classes(root / "a", range(5), PER_CLASS), root / "index", shard="a", progress=False, num_threads=1)
    PrivateIndex.open(root / "index").add(write_digit_classes(root / "b", range(5, 10), PER_CLASS), shard="b", num_threads=1)
    return root


@pytest.fixture()
def corpus(tmp_path: Path, two_shard_root: Path) -> Path:
    """A per-test copy: PNG folders + an index built over the copy (its sources point at the copy)."""
    target = tmp_path / "corpus"
    for part in ("a", "b"):
        shutil.copytree(two_shard_root / part, target / part)
    build_index(target / "a", target / "index", shard="a", progress=False, num_threads=1)
    PrivateIndex.open(target / "index").add(target / "b", shard="b", num_threads=1)
    return target


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory, two_shard_root: Path) -> Path:
    from diffusers import DDIMScheduler

    dim = PrivateIndex.open(two_shard_root / "index").dim
    folder = tmp_path_factory.mktemp("decoder") / "tiny"
    TinyDecoder(tiny_unet(dim), DDIMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return folder


@pytest.fixture()
def decoder(decoder_dir: Path) -> TinyDecoder:
    return TinyDecoder.from_pretrained(decoder_dir)


@pytest.fixture()
def ledger(corpus: Path) -> Ledger:
    index = PrivateIndex.open(corpus / "index")
    book = Ledger(index.path / "budget.sqlite")
    for name in ("a", "b"):
        book.create_scope(name, epsilon=50.0, delta=1e-5, k=10, q=0.5, sigma=0.3, records=50)
    return book
