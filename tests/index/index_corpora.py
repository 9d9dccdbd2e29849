"""Generated corpora and a tiny open_clip checkpoint for the index tests (imported by conftest and tests)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def save_tiny_clip(directory: Path, seed: int) -> Path:
    """Write a random-init tiny open_clip model (local-dir format) and return the directory."""
    import open_clip
    from safetensors.torch import save_file

    import index  # noqa: F401  (torchvision shim before open_clip)

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}})
    )
    return directory


def noise_image(seed: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
    """A distinct RGB image per seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_good_images(folder: Path, count: int, *, start: int = 0) -> list[Path]:
    """``count`` distinct PNGs in ``folder`` (nested one level for half of them)."""
    paths = []
    for i in range(start, start + count):
        sub = folder / ("nested" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.png"
        noise_image(i).save(path)
        paths.append(path)
    return paths


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (Pillow refuses it at open: a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def write_bad_and_odd_files(folder: Path) -> dict[str, str]:
    """Every bad-file kind and every convertible mode; returns name -> expected outcome ('ok' or reason part)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    buf = folder / "full.jpg"
    noise_image(900, (64, 64)).save(buf, quality=90)
    data = buf.read_bytes()
    buf.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "undecodable"
    png = folder / "full.png"
    noise_image(901, (64, 64)).save(png)
    pdata = png.read_bytes()
    png.unlink()
    (folder / "truncated.png").write_bytes(pdata[: len(pdata) // 2])
    expected["truncated.png"] = "undecodable"
    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "empty file"
    (folder / "notes.jpg").write_text("this is not an image\n")
    expected["notes.jpg"] = "not an image"
    (folder / "readme.txt").write_text("corpus notes\n")
    expected["readme.txt"] = "not an image file"
    (folder / "bomb.png").write_bytes(bomb_png(30000, 30000))
    expected["bomb.png"] = "too large"
    noise_image(902, (200, 200)).save(folder / "large.png")  # over the 10_000-pixel cap the tests pass
    expected["large.png"] = "too large"
    noise_image(903).convert("CMYK").save(folder / "cmyk.jpg")
    expected["cmyk.jpg"] = "ok"
    arr16 = (np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 97).astype(np.uint16)
    Image.fromarray(arr16).save(folder / "gray16.png")
    expected["gray16.png"] = "ok"
    pal = noise_image(904).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    expected["palette.png"] = "ok"
    rgba = noise_image(905).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    expected["alpha.png"] = "ok"
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["anim.gif"] = "ok"
    noise_image(906).save(folder / "photo.webp", lossless=True)
    expected["photo.webp"] = "ok"
    noise_image(907).save(folder / "photo.bmp")
    expected["photo.bmp"] = "ok"
    noise_image(908).convert("L").save(folder / "gray.png")
    expected["gray.png"] = "ok"
    return expected


def exact_search(shards, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-private exact top-k over ``shards`` through the shard primitives only (a test oracle, not product API).

    Returns ``(scores, ids)`` best first, equal scores by the smaller id, padded with ``-inf`` / ``-1``.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    scores_out = np.full((len(queries), k), -np.inf, np.float32)
    ids_out = np.full((len(queries), k), -1, np.int64)
    for j, query in enumerate(queries):
        scores, ids = [], []
        for shard in shards:
            positions = shard.restrict(query, np.arange(shard.num_records, dtype=np.int64))
            scores.append(shard.score(query, positions))
            ids.append(shard.ids_at(positions))
        s, i = np.concatenate(scores), np.concatenate(ids)
        order = np.lexsort((i, -s.astype(np.float64)))[:k]
        scores_out[j, : order.size], ids_out[j, : order.size] = s[order], i[order]
    return scores_out, ids_out
