"""Fixtures for the index tests: a tiny open_clip model built from config, and generated image corpora.

Nothing here depends on the bundled encoder: the model is random-init from a fixed seed and saved in
open_clip's ``local-dir`` format, so tests pass ``model="local-dir:<dir>"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from index_corpora import noise_image, save_tiny_clip, write_bad_and_odd_files, write_good_images


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``local-dir:`` spec of a tiny open_clip model (embed_dim 16, 32 px)."""
    return "local-dir:" + str(save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0))


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny model with different weights (for encoder-mismatch tests)."""
    return "local-dir:" + str(save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-other"), seed=1))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder of 24 distinct good images (nested)."""
    folder = tmp_path / "corpus"
    write_good_images(folder, 24)
    return folder


@pytest.fixture
def messy_corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """10 good images plus every bad and odd file kind, plus an exact duplicate saved in another format."""
    folder = tmp_path / "messy"
    write_good_images(folder, 10)
    expected = write_bad_and_odd_files(folder / "odd")
    noise_image(3).save(folder / "odd" / "copy_of_img003.bmp")  # same pixels as img003.png
    return folder, expected
