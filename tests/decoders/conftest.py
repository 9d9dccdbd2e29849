"""Session fixtures: one tiny random folder per decoder family, in the real on-disk layout (tests/decoder_folders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from decoder_folders import build_kandinsky_folder, build_tiny_folder, build_unclip_folder

FAMILIES = ("tiny", "stable-unclip", "kandinsky-2.2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_folder(tmp_path_factory.mktemp("tiny") / "decoder")


@pytest.fixture(scope="session")
def unclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_unclip_folder(tmp_path_factory.mktemp("unclip") / "pipe")


@pytest.fixture(scope="session")
def kandinsky_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_kandinsky_folder(tmp_path_factory.mktemp("kandinsky") / "pipe")


@pytest.fixture(scope="session")
def family_dirs(tiny_dir: Path, unclip_dir: Path, kandinsky_dir: Path) -> dict[str, Path]:
    return {"tiny": tiny_dir, "stable-unclip": unclip_dir, "kandinsky-2.2": kandinsky_dir}


@pytest.fixture(scope="session", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, family_dirs: dict[str, Path]) -> tuple[str, Path]:
    """(family name, folder) for each family in turn."""
    return request.param, family_dirs[request.param]
