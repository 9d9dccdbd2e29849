"""Training data of a fine-tuning run: exactly the shard's current records, read back from their sources.

The shard's ``metadata.sqlite`` names each stored record's source (an image file path, or a dataset row
``"<path>#<split>[<row>]"``) plus aliases for exact duplicates. A record is used only if one of its sources
still decodes to the same content id the index stored (:func:`index.sources.content_id` of the RGB pixels):
a missing, unreadable or changed source is skipped and reported (``source`` + one-line reason), never
guessed. Removed records are not in the current generation's metadata, so they are never read. The
condition of each record is its own row of the shard's ``embeddings.npy`` (the index encoder's unit
embedding of the same pixels).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineInputError

if TYPE_CHECKING:
    from PIL import Image

    from index import PrivateIndex

__all__ = ["ShardRecords", "images_to_tensor", "read_shard_records"]

_DATASET_ROW = re.compile(r"^(?P<path>.+)#(?P<split>[^#\[\]]*)\[(?P<row>\d+)\]$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardRecords:
    """The readable records of one shard.

    Attributes:
        shard: shard name.
        ids: (n,) int64 content ids of the records read (shard row order).
        images: the n decoded RGB images.
        embeddings: (n, d) float32 unit rows of those records from the shard.
        shard_records: records the shard holds now (N of the scope).
        skipped: ``{"source", "reason"}`` of each record that could not be read.
    """

    shard: str
    ids: np.ndarray
    images: tuple[Image.Image, ...]
    embeddings: np.ndarray
    shard_records: int
    skipped: tuple[dict[str, str], ...]

    def __len__(self) -> int:
        return len(self.ids)


def _decode_files(wanted: dict[str, int]) -> dict[str, object]:
    from index.sources import decode_image

    out: dict[str, object] = {}
    for source in wanted:
        path = Path(source)
        out[source] = decode_image(path, source) if path.is_file() else None
    return out


def _decode_dataset_rows(wanted: dict[str, int]) -> dict[str, object]:
    from index.errors import IndexInputError
    from index.sources import read_dataset

    by_path: dict[str, set[str]] = defaultdict(set)
    for source in wanted:
        by_path[_DATASET_ROW.match(source)["path"]].add(source)
    out: dict[str, object] = {}
    for path, sources in by_path.items():
        if not Path(path).exists():
            continue
        try:
            for item in read_dataset(Path(path)):
                if item.source in sources:
                    out[item.source] = item
        except IndexInputError:
            continue
    return out


def read_shard_records(index: PrivateIndex, shard: str) -> ShardRecords:
    """Read the current records of ``shard`` from their recorded sources.

    Args:
        index: an open :class:`index.PrivateIndex`.
        shard: the shard name.

    Returns:
        The readable records (possibly none; the caller refuses an empty set).

    Raises:
        index.IndexInputError: no such shard.
        index.IndexCorruptError: the shard's files fail their checks.
    """
    from index.sources import Decoded

    view = index.shard(shard)
    rows, aliases = view.metadata()
    ids = view.ids
    embeddings = view.embeddings
    candidates: dict[int, list[str]] = {row.id: [row.source] for row in rows}
    for alias in aliases:
        if alias.id in candidates:
            candidates[alias.id].append(alias.source)
    all_sources = {s: i for i, srcs in candidates.items() for s in srcs}
    files = {s: i for s, i in all_sources.items() if not _DATASET_ROW.match(s)}
    dataset_rows = {s: i for s, i in all_sources.items() if _DATASET_ROW.match(s)}
    decoded = {**_decode_files(files), **_decode_dataset_rows(dataset_rows)}
    keep, images, skipped = [], [], []
    for pos, record_id in enumerate(ids.tolist()):
        reason = "source is gone (file or dataset row missing)"
        for source in candidates.get(record_id, []):
            item = decoded.get(source)
            if isinstance(item, Decoded) and item.id == record_id:
                keep.append(pos)
                images.append(item.image)
                break
            if isinstance(item, Decoded):
                reason = "source changed since it was indexed (different pixels)"
            elif item is not None:
                reason = getattr(item, "reason", reason)
        else:
            skipped.append({"source": candidates.get(record_id, ["<no source>"])[0], "reason": reason})
    positions = np.asarray(keep, dtype=np.int64)
    return ShardRecords(
        shard=shard,
        ids=ids[positions],
        images=tuple(images),
        embeddings=np.array(embeddings[positions], dtype=np.float32),
        shard_records=int(view.num_records),
        skipped=tuple(skipped),
    )


def images_to_tensor(images: tuple[Image.Image, ...] | list[Image.Image], image_size: int) -> torch.Tensor:
    """RGB/grey PIL images -> (n, 1, image_size, image_size) float32 in [-1, 1] (grey, antialiased resize).

    Raises:
        PipelineInputError: no images.
    """
    if not images:
        raise PipelineInputError("no images to train on; the shard has no readable records")
    out = []
    for image in images:
        grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32).copy())
        x = grey.div_(127.5).sub_(1.0)[None, None]
        if x.shape[-2:] != (image_size, image_size):
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x)
    return torch.cat(out).contiguous()
