"""Readers: turn a private corpus (an image folder or a Hugging Face ``datasets`` corpus) into decoded records.

This is the *reader* stage of the reader → mapper (encoder) → writer (store) split. Invariants:

* every record is an RGB ``PIL.Image`` plus a stable 64-bit id derived from the decoded pixels
  (:func:`content_id`), so the same picture saved as PNG and as BMP gets the same id;
* bad input never raises: truncated, zero-byte, non-image, over-sized (decompression bomb) and undecodable
  files come back as :class:`Skipped` with a one-line reason; CMYK, 16-bit, palette, alpha and animated
  images are converted;
* iteration order is deterministic (sorted paths, dataset row order), so builds are reproducible;
* no private copy outside the index (issue 9): ``.parquet``/``.arrow`` files are read with pyarrow directly,
  batch by batch (``datasets.Dataset.from_parquet`` would write the raw images into the persistent Hugging Face
  cache, 0644 files never removed); ``save_to_disk`` directories are memory-mapped in place by ``datasets``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from index.errors import IndexInputError
from index.fs import expand_user

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DATASET_SUFFIXES = frozenset({".parquet", ".arrow"})
DEFAULT_MAX_PIXELS = 64_000_000  # images above this are decompression-bomb suspects and are skipped
_ID_MASK = (1 << 63) - 1  # faiss ids are int64; keep them non-negative (-1 means "no result")


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded corpus record: its content id, where it came from, and the RGB image."""

    id: int
    source: str
    image: Image.Image


@dataclass(frozen=True, slots=True)
class Skipped:
    """A corpus entry that could not be used, with a one-line reason (listed in build reports and ``info``)."""

    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON form used by the build report and ``index info``."""
        return {"source": self.source, "reason": self.reason}


def content_id(image: Image.Image) -> int:
    """Stable non-negative 63-bit id of an RGB image: the first 8 bytes of sha256(size + pixels).

    Hashing the decoded pixels (not the file bytes) makes re-encoded copies of the same picture exact
    duplicates, stored once.
    """
    digest = hashlib.sha256()
    digest.update(b"dprdm-rgb8:%d:%d:" % image.size)
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") & _ID_MASK


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha is composited on white, high bit depths are rescaled."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = (
            255.0
            if arr.size == 0 or arr.max() <= 255
            else (65535.0 if arr.max() <= 65535 else float(arr.max()))
        )
        arr = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if mode != "RGB" else image


def decode_image(
    data: bytes | Path, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded | Skipped:
    """Decode image bytes or a file safely into a :class:`Decoded` record, or say why it was skipped.

    Args:
        data: the encoded bytes, or a path to read them from.
        source: the label kept in metadata and reports (a path or a dataset row).
        max_pixels: width × height cap, checked from the header *before* pixels are decoded.

    Returns:
        ``Decoded`` (RGB, EXIF orientation applied, first frame of animations) or ``Skipped``.
    """
    try:
        raw = data.read_bytes() if isinstance(data, Path) else data
    except OSError as err:
        return Skipped(source, f"unreadable file ({err.strerror or type(err).__name__})")
    if not raw:
        return Skipped(source, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return Skipped(
                        source,
                        f"too large ({width}x{height} > {max_pixels} pixels; decompression-bomb guard)",
                    )
                image.seek(0)  # first frame of GIF/WebP animations
                image.load()
                image = ImageOps.exif_transpose(image) or image
                rgb = _to_rgb(image)
    except Image.DecompressionBombError as err:
        return Skipped(source, f"too large (decompression-bomb guard: {err})")
    except Image.DecompressionBombWarning:
        return Skipped(source, "too large (decompression-bomb guard)")
    except Image.UnidentifiedImageError:
        return Skipped(source, "not an image (unrecognised format)")
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        return Skipped(source, f"undecodable image ({reason[:120]})")
    if rgb.width == 0 or rgb.height == 0:
        return Skipped(source, "empty image (0 pixels)")
    return Decoded(content_id(rgb), source, rgb)


def _folder_files(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order; hidden entries, symlinked dirs and ``exclude`` left out."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d != exclude)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def read_folder(
    root: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exclude: Path | None = None
) -> Iterator[Decoded | Skipped]:
    """Yield every file under ``root`` (recursively) as a decoded record or a skip with its reason.

    ``exclude`` is a directory left out of the walk (the index itself, when it lives inside the corpus).
    """
    for path in _folder_files(root, exclude):
        source = str(path)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            yield Skipped(source, f"not an image file (extension '{path.suffix or 'none'}')")
            continue
        yield decode_image(path, source, max_pixels=max_pixels)


def is_dataset_source(path: Path) -> bool:
    """True for parquet/arrow files and ``save_to_disk`` directories, which are read with ``datasets``."""
    if path.is_file():
        return path.suffix.lower() in DATASET_SUFFIXES
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _bad_dataset(path: Path, err: Exception) -> IndexInputError:
    return IndexInputError(
        f"dataset source '{path}' could not be loaded ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
        "pass a save_to_disk directory or a .parquet/.arrow file"
    )


def _pa_struct_type() -> type:
    """pyarrow's struct type class (pyarrow is imported lazily, like datasets)."""
    import pyarrow as pa

    return pa.StructType


def _open_table_file(path: Path) -> tuple[Any, Callable[[str], Iterator[Any]]]:
    """``(arrow schema, batches(column))`` of a .parquet or .arrow file, read in place by pyarrow (no cache)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        parquet = pq.ParquetFile(str(path))
        return parquet.schema_arrow, lambda column: parquet.iter_batches(batch_size=256, columns=[column])
    try:  # datasets writes the IPC stream format; plain Arrow IPC files are accepted too
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_stream(source).schema
        stream = True
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_file(source).schema
        stream = False

    def batches(column: str) -> Iterator[Any]:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source) if stream else pa.ipc.open_file(source)
            parts = reader if stream else (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in parts:
                yield batch.select([column])

    return schema, batches


def _choose_column(columns: list[str], wanted: str | None, path: Path, images: list[str]) -> str:
    """``wanted`` if given (and present), else the first of ``images`` (image-typed columns), else 'image'/'img'."""
    if wanted is not None:
        if wanted not in columns:
            raise IndexInputError(
                f"--image-column '{wanted}' is not a column of '{path}' (found {columns}); pass one of those"
            )
        return wanted
    for name in [*images, "image", "img"]:
        if name in columns:
            return name
    raise IndexInputError(f"no image column found in '{path}' (columns {columns}); pass --image-column NAME")


def _table_image_column(schema: Any, wanted: str | None, path: Path) -> str:
    """Image column of an arrow schema: ``wanted``, else an ``Image`` feature, an image struct, or 'image'/'img'."""
    try:
        features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))["info"]["features"]
    except (KeyError, TypeError, ValueError):
        features = {}
    typed = [n for n in schema.names if isinstance(features.get(n), dict) and features[n].get("_type") == "Image"]
    structs = [
        f.name for f in schema if isinstance(f.type, _pa_struct_type()) and {"bytes", "path"} <= {x.name for x in f.type}
    ]
    return _choose_column(list(schema.names), wanted, path, typed + structs)


def _read_table_file(path: Path, *, image_column: str | None, max_pixels: int) -> Iterator[Decoded | Skipped]:
    """Rows of a .parquet/.arrow file, decoded one batch at a time; nothing is written anywhere."""
    try:
        schema, batches = _open_table_file(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise _bad_dataset(path, err) from err
    column = _table_image_column(schema, image_column, path)
    row = 0
    for batch in batches(column):
        for cell in batch.column(0).to_pylist():
            source = f"{path}#[{row}]"
            row += 1
            data = _cell_bytes(cell)
            if data is None:
                yield Skipped(source, f"no image in column '{column}' (found {type(cell).__name__})")
                continue
            yield decode_image(data, source, max_pixels=max_pixels)


def _load_dataset(path: Path) -> list[tuple[str, Any]]:
    """Load a ``save_to_disk`` corpus as ``[(split_label, Dataset)]`` without any network access."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many unrelated types for a bad corpus
        raise _bad_dataset(path, err) from err
    if isinstance(loaded, datasets.DatasetDict):
        return [(name, loaded[name]) for name in sorted(loaded)]
    return [("", loaded)]


def _image_column(dataset: Any, wanted: str | None, path: Path) -> str:
    """Pick the image column: ``wanted`` if given, else the first ``Image`` feature, else 'image'/'img'."""
    import datasets

    typed = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    return _choose_column(list(dataset.column_names), wanted, path, typed)


def _cell_bytes(cell: Any) -> bytes | Path | None:
    """The encoded image bytes (or file path) stored in one dataset cell, whatever its storage shape."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            return Path(cell["path"])
    if isinstance(cell, str) and cell:
        return Path(cell)
    return None


def read_dataset(
    path: Path, *, image_column: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Decoded | Skipped]:
    """Yield every row of a ``datasets`` corpus; the image cell is decoded with the same safe decoder.

    The source label is ``"<path>#<split>[<row>]"`` (``"<path>#[<row>]"`` without splits), so removal by the
    dataset path removes all its rows.
    """
    if path.is_file():
        yield from _read_table_file(path, image_column=image_column, max_pixels=max_pixels)
        return
    import datasets

    for split, dataset in _load_dataset(path):
        column = _image_column(dataset, image_column, path)
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        cells = (
            cell for batch in dataset.select_columns([column]).iter(batch_size=256) for cell in batch[column]
        )
        for row, cell in enumerate(cells):
            source = f"{path}#{split}[{row}]"
            data = _cell_bytes(cell)
            if data is None:
                yield Skipped(source, f"no image in column '{column}' (found {type(cell).__name__})")
                continue
            yield decode_image(data, source, max_pixels=max_pixels)


def read_source(
    source: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exclude: Path | None = None,
) -> Iterator[Decoded | Skipped]:
    """Dispatch to the folder or the ``datasets`` reader; the path must exist.

    Raises:
        IndexInputError: the source does not exist, or is neither a folder nor a dataset, or has no image column.
    """
    path = expand_user(source).resolve()
    if not path.exists():
        raise IndexInputError(f"source '{source}' does not exist; pass an image folder or a datasets corpus")
    if is_dataset_source(path):
        return read_dataset(path, image_column=image_column, max_pixels=max_pixels)
    if path.is_dir():
        if image_column is not None:
            raise IndexInputError(
                f"--image-column was given but '{source}' is an image folder; drop the option"
            )
        return read_folder(path, max_pixels=max_pixels, exclude=exclude)
    raise IndexInputError(
        f"source '{source}' is a single file of an unsupported kind; pass a folder of images, a .parquet/.arrow file "
        "or a datasets save_to_disk directory"
    )
