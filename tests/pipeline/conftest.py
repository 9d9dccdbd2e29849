"""Fixtures for the pipeline tests: a small private index built with the bundled encoder, ledgers, a tiny decoder.

The corpus is a few hundred digits of the bundled private half; the decoder is a randomly initialised tiny UNet
built from config (decoder quality is not under test here, the privacy path is).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from digit_folders import write_digit_classes

from accountant import Ledger
from index import PrivateIndex, build_index
from pipeline.decoders import TinyDecoder

PER_CLASS = 30


@pytest.fixture(scope="session")
def built_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shard ('default') of 300 private digits (30 per class), built once per session (never bound)."""
    root = tmp_path_factory.mktemp("single")
    build_index(write_digit_classes(root / "pngs", range(10), PER_CLASS), root / "index", progress=False, num_threads=1)
    return root / "index"


@pytest.fixture(scope="session")
def built_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards 'low' (digits 0-4) and 'high' (digits 5-9), 10 per class, built once per session."""
    root = tmp_path_factory.mktemp("two")
    build_index(write_digit_classes(root / "low", range(5), 10), root / "index", shard="low", progress=False, num_threads=1)
    build_index(write_digit_classes(root / "high", range(5, 10), 10), root / "index", shard="high", progress=False, num_threads=1)
    return root / "index"


@pytest.fixture()
def index_dir(tmp_path: Path, built_single: Path) -> Path:
    """A per-test copy of the single-shard index: an index binds its one ledger, so tests never share one."""
    return Path(shutil.copytree(built_single, tmp_path / "single"))


@pytest.fixture()
def two_shard_dir(tmp_path: Path, built_two: Path) -> Path:
    """A per-test copy of the two-shard index."""
    return Path(shutil.copytree(built_two, tmp_path / "two"))


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory, built_single: Path) -> Path:
    """A tiny randomly initialised TinyDecoder (8×8 images) saved like a trained one."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    dim = PrivateIndex.open(built_single).dim
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(8, 16), cross_attention_dim=dim,
        attention_head_dim=4, class_embed_type="projection", projection_class_embeddings_input_dim=dim,
    )
    folder = tmp_path_factory.mktemp("decoder") / "tiny"
    TinyDecoder(unet, DDIMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def encoder(built_single: Path):
    """The index's own (bundled) encoder, loaded once."""
    return PrivateIndex.open(built_single).load_encoder()


@pytest.fixture()
def decoder(decoder_dir: Path) -> TinyDecoder:
    return TinyDecoder.from_pretrained(decoder_dir)


@pytest.fixture()
def private_copy(index_dir: Path) -> Path:
    """A per-test copy of the single-shard index (so its default ledger DIR/budget.sqlite is the test's own)."""
    return index_dir


MakeLedger = Callable[..., Ledger]


@pytest.fixture()
def make_ledger(tmp_path: Path) -> MakeLedger:
    """Create a ledger with one scope per given shard: ``make_ledger(path=None, default=dict(k=.., q=.., ...))``.

    Without ``path`` the ledger is the own ledger (``DIR/budget.sqlite``) of the one index copy this test made.
    """

    def make(path: Path | None = None, **scopes: dict) -> Ledger:
        if path is None:
            copies = [tmp_path / name for name in ("single", "two") if (tmp_path / name).is_dir()]
            path = copies[0] / "budget.sqlite" if len(copies) == 1 else tmp_path / "budget.sqlite"
        ledger = Ledger(path)
        for name, params in scopes.items():
            ledger.create_scope(name, **({"epsilon": 10.0, "delta": 1e-6} | params))
        return ledger

    return make
