"""Write one generation to disk: the PNGs, one grid PNG and a JSON record, every file atomically.

The record holds only public facts: the prompt, the mechanism (k, q, sigma), the decoder settings and the budget
after the query. Never neighbour ids, scores, vectors or seeds.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipeline._files import atomic_write_bytes
from pipeline.errors import PipelineInputError

if TYPE_CHECKING:
    from pipeline.generate import GenerationResult

__all__ = ["SavedGeneration", "make_grid", "save_generation", "save_png"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedGeneration:
    """Paths written for one generation.

    Attributes:
        images (`tuple[Path, ...]`): one PNG per image.
        grid (`Path`): all images side by side.
        record (`Path`): the JSON record of the call.
    """

    images: tuple[Path, ...]
    grid: Path
    record: Path

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (paths as strings)."""
        return {"images": [str(path) for path in self.images], "grid": str(self.grid), "record": str(self.record)}


def save_png(image: Image.Image, path: Path) -> Path:
    """Atomically write ``image`` as a PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def make_grid(rows: Sequence[Sequence[Image.Image]], *, pad: int = 2, scale: int = 1, background: int = 255) -> Image.Image:
    """Tile images into one grid image, one list per row (images resized to the first one's size).

    Args:
        rows (`Sequence[Sequence[PIL.Image.Image]]`): the images, row by row.
        pad (`int`, *optional*, defaults to 2): gap in pixels between tiles (after scaling).
        scale (`int`, *optional*, defaults to 1): nearest-neighbour upscaling of every tile.
        background (`int`, *optional*, defaults to 255): grey level of the gaps.

    Returns:
        `PIL.Image.Image`: an RGB grid.

    Raises:
        PipelineInputError: no image at all.
    """
    tiles = [image for row in rows for image in row]
    if not tiles:
        raise PipelineInputError("make_grid needs at least one image; found none; generate images first")
    width, height = tiles[0].size
    width, height = width * scale, height * scale
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (columns * width + (columns + 1) * pad, len(rows) * height + (len(rows) + 1) * pad),
                     (background,) * 3)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
            grid.paste(tile, (pad + c * (width + pad), pad + r * (height + pad)))
    return grid


def save_generation(result: GenerationResult, out_dir: str | os.PathLike[str], *, grid_scale: int = 4) -> SavedGeneration:
    """Write the images, a grid and the JSON record of ``result`` under ``out_dir`` (created if needed).

    File names are ``<prompt-slug>-<UTC time>-<random tag>``, so repeated calls never overwrite each other.

    Returns:
        `SavedGeneration`: the paths written.

    Raises:
        PipelineInputError: ``out_dir`` exists and is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PipelineInputError(f"--out {out} is a file; pass a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(result.prompt or 'image-query')}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
    images = tuple(save_png(image, out / f"{stem}-{i}.png") for i, image in enumerate(result.images))
    grid = save_png(make_grid([result.images], scale=grid_scale), out / f"{stem}-grid.png")
    record = out / f"{stem}.json"
    payload = result.to_dict() | {"images": [p.name for p in images], "grid": grid.name,
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(record, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    return SavedGeneration(images=images, grid=grid, record=record)


def _slug(text: str, limit: int = 48) -> str:
    """File-name-safe lower-case slug of ``text``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "query"
