"""Training records and queries from disk, for ``dprdm attribute``: an image folder, or an index shard's records.

* :func:`folder_records`: every image of a folder (or ``datasets`` corpus), read with the index's safe reader
  (``index.sources``: same decoding, same content ids, same skip reasons as ``dprdm index build``); labels are the
  first-level subfolder names when every image sits in one (``<label>/<file>.png``), else None.
* :func:`shard_records`: the current records of one shard of a private index, read back from the sources the index
  recorded (``PrivateIndex.records``). A record whose source is gone, unreadable or changed (its pixels no longer
  hash to the record's content id) is skipped and reported. Attribution is an owner's tool: this reads the shard's
  files directly (no DP query, no ledger), so it works only for a caller who can read them.
* Conditions are the decoder's training conditions: the mean of the unit embeddings of each record's ``neighbours``
  nearest other records of the same set (``pipeline.train.decoder``), or its own embedding with ``neighbours=0``.
  For a shard they are computed from the shard's stored embeddings (the index's encoder), over every record of the
  shard, so a record whose source is gone still conditions its neighbours.
* The feature cache of a set lives in :func:`cache_dir`: one folder per (model, neighbours, training set), so a
  change of the set (records added or removed change the neighbour conditions) never reuses stale features, and
  :func:`drop_cached_records` removes the rows of removed records from every cached file of an index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.attribution.forget import CACHE_FOLDER, drop_cached_records, forget_hook, index_cache_root
from pipeline.attribution.model import RecordSet, _as_unit_images
from pipeline.errors import PipelineInputError, PrivacyRefusal

OWNER_ONLY = "owner-only: names training records; never expose it to analysts"


@dataclass
class LoadedRecords:
    """A record set read from disk, with what could not be read.

    Attributes:
        records: the readable records (ids = content ids, sources = paths / dataset rows), conditions included.
        skipped: ``{"source", "reason"}`` (folder) or ``{"id", "source", "reason"}`` (shard) per unreadable entry.
        images: the decoded RGB images, in ``records`` order (for the encoder).
        embeddings: (N, d) unit embeddings of the records (the encoder's), in ``records`` order.
    """

    records: RecordSet
    skipped: list[dict] = field(default_factory=list)
    images: list = field(default_factory=list, repr=False)
    embeddings: np.ndarray | None = field(default=None, repr=False)


def model_images(images: Sequence, image_size: int | None) -> torch.Tensor:
    """RGB/any PIL images → (N, 1, S, S) float in [-1, 1]: grayscale, then the decoder's own resize
    (``images_to_unit_range``: bilinear, antialiased), image by image so sizes may differ."""
    if not images:
        return torch.zeros((0, 1, image_size or 1, image_size or 1))
    out = [_as_unit_images(np.array(im.convert("L"), dtype=np.uint8)[None], image_size) for im in images]
    return torch.cat(out)


def conditions_from_embeddings(embeddings: np.ndarray, neighbours: int) -> np.ndarray:
    """(N, d): own unit embedding (``neighbours=0``) or the mean of the ``neighbours`` nearest others' (the decoder's
    training condition). ``neighbours`` is clamped to N - 1.

    Raises:
        PipelineInputError: ``neighbours`` < 0.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if neighbours < 0:
        raise PipelineInputError(f"--neighbours must be >= 0; found {neighbours}")
    k = min(neighbours, len(emb) - 1)
    if k <= 0:
        return emb.copy()
    from pipeline.train.decoder import neighbour_means

    return np.ascontiguousarray(neighbour_means(emb, k)[:, k - 1], dtype=np.float32)


def _labels_from_paths(root: Path, sources: Sequence[str]) -> np.ndarray | None:
    names = []
    for src in sources:
        rel = Path(src).relative_to(root) if Path(src).is_relative_to(root) else None
        if rel is None or len(rel.parts) < 2:
            return None
        names.append(rel.parts[0])
    if not names:
        return None
    if all(n.isdigit() for n in names):
        return np.asarray([int(n) for n in names], dtype=np.int64)
    order = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.asarray([order[n] for n in names], dtype=np.int64)


def read_images(source: str | os.PathLike, *, what: str = "source") -> tuple[list, list[int], list[str], list[dict]]:
    """Decode one image file, or every image of a folder / ``datasets`` corpus, with the index's safe reader.

    Returns:
        ``(images, content ids, sources, skipped)``; duplicates (same pixels) are kept once, the rest reported.

    Raises:
        PipelineInputError: the path does not exist, or holds no readable image.
    """
    from index.errors import IndexInputError
    from index.sources import Decoded, decode_image, read_source

    path = Path(source).expanduser()
    if not path.exists():
        raise PipelineInputError(f"{what} '{source}' does not exist; pass an image file or a folder of images")
    path = path.resolve()
    if path.is_file() and path.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}:
        entries = [decode_image(path, str(path))]
    else:
        try:
            entries = list(read_source(path))
        except IndexInputError as err:
            raise PipelineInputError(str(err).replace("source '", f"{what} '", 1)) from None
    images, ids, sources, skipped, seen = [], [], [], [], {}
    for entry in entries:
        if not isinstance(entry, Decoded):
            skipped.append(entry.to_dict())
        elif entry.id in seen:
            skipped.append({"source": entry.source, "reason": f"duplicate of {seen[entry.id]}"})
        else:
            seen[entry.id] = entry.source
            images.append(entry.image)
            ids.append(entry.id)
            sources.append(entry.source)
    if not images:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:3])
        raise PipelineInputError(f"{what} '{source}' holds no readable image" + (f" ({reasons})" if reasons else ""))
    return images, ids, sources, skipped


def folder_records(source: str | os.PathLike, *, image_size: int | None, encoder=None,
                   neighbours: int = 10) -> LoadedRecords:
    """The images of ``source`` (folder, image file or ``datasets`` corpus) as training records.

    Args:
        source: the training images.
        image_size: the decoder's image side (records are resized to it).
        encoder: an ``index.Encoder`` (None = the bundled tiny CLIP) for the conditions.
        neighbours: condition = mean of the k nearest others' embeddings (0 = own embedding).

    Raises:
        PipelineInputError: a missing or empty source.
    """
    from index import load_encoder

    images, ids, sources, skipped = read_images(source, what="training source")
    enc = encoder if encoder is not None else load_encoder(num_threads=None)
    emb = enc.encode_images(images)
    cond = conditions_from_embeddings(emb, neighbours)
    root = Path(source).expanduser().resolve()
    labels = _labels_from_paths(root, sources) if root.is_dir() else None
    records = RecordSet.from_arrays(model_images(images, image_size), cond, ids=ids, sources=sources, labels=labels)
    return LoadedRecords(records, skipped, images, emb)


def query_records(source: str | os.PathLike, *, image_size: int | None, encoder=None) -> LoadedRecords:
    """Query images (a file or a folder), each conditioned on its own embedding (the aggregate it was generated
    from is not at hand; it describes the image)."""
    from index import load_encoder

    images, ids, sources, skipped = read_images(source, what="query")
    enc = encoder if encoder is not None else load_encoder(num_threads=None)
    emb = enc.encode_images(images)
    records = RecordSet.from_arrays(model_images(images, image_size), emb, ids=ids, sources=sources)
    return LoadedRecords(records, skipped, images, emb)


def _dataset_path(source: str) -> str | None:
    """``/x/data.parquet#[3]`` / ``/x/ds#train[3]`` → ``/x/data.parquet`` / ``/x/ds``; a plain path → None."""
    head, sep, tail = source.rpartition("#")
    return head if sep and tail.endswith("]") and "[" in tail else None


def shard_records(index, shard: str, *, image_size: int | None, neighbours: int = 10) -> LoadedRecords:
    """The current records of ``shard``, read from the sources the index recorded; gone ones are skipped.

    Args:
        index: an opened ``PrivateIndex``.
        shard: the shard name.
        image_size: the decoder's image side.
        neighbours: condition = mean of the k nearest other records' stored embeddings (0 = own embedding).

    Raises:
        IndexInputError: no such shard (exit 2).
        PrivacyRefusal: the shard's files cannot be read by this user (attribution is owner-only, exit 3).
        PipelineInputError: none of the shard's records can be read back from its sources.
    """
    from index.sources import Decoded, decode_image, read_source

    view = index.shard(shard)  # IndexInputError for an unknown shard
    try:
        positions = np.arange(view.num_records, dtype=np.int64)
        shard_ids = view.ids_at(positions) if len(positions) else np.zeros(0, dtype=np.int64)
        embeddings = view.rows(positions) if len(positions) else np.zeros((0, index.dim), dtype=np.float32)
        listed: dict[int, list[str]] = {}
        for _, rid, src in index.records(shard):
            listed.setdefault(int(rid), []).append(src)
    except PermissionError as err:
        raise PrivacyRefusal(
            f"cannot read shard '{shard}' of index '{index.path}' ({err.strerror}); attribution is {OWNER_ONLY}, "
            "so it runs only for a user who can read the shard's files"
        ) from None
    if not len(shard_ids):
        raise PipelineInputError(f"shard '{shard}' of index '{index.path}' holds no records; nothing to attribute")
    conditions = conditions_from_embeddings(embeddings, neighbours)
    wanted = {int(i) for i in shard_ids}
    found: dict[int, tuple[object, str]] = {}
    reasons: dict[int, str] = {}
    datasets: dict[str, set[str]] = {}
    for rid in shard_ids:
        for src in listed.get(int(rid), []):
            ds = _dataset_path(src)
            if ds is not None:
                datasets.setdefault(ds, set()).add(src)
                continue
            entry = decode_image(Path(src), src)
            if isinstance(entry, Decoded) and entry.id == int(rid):
                found[int(rid)] = (entry.image, src)
                break
            reasons[int(rid)] = entry.reason if not isinstance(entry, Decoded) else "changed since it was indexed"
    for ds, labels in datasets.items():
        try:
            entries = read_source(ds)
            for entry in entries:
                if entry.source in labels and isinstance(entry, Decoded) and entry.id in wanted:
                    found.setdefault(entry.id, (entry.image, entry.source))
        except Exception as err:  # noqa: BLE001  (a gone or damaged dataset: its rows are reported as skipped)
            for src in labels:
                reasons.setdefault(_id_of(src, listed), f"dataset unreadable ({type(err).__name__})")
    keep = [p for p, rid in enumerate(shard_ids) if int(rid) in found]
    skipped = [{"id": int(rid), "source": (listed.get(int(rid)) or [""])[0],
                "reason": reasons.get(int(rid), "source gone (not found in its dataset)")}
               for rid in shard_ids if int(rid) not in found]
    if not keep:
        raise PipelineInputError(
            f"none of the {len(shard_ids)} records of shard '{shard}' can be read from their recorded sources "
            f"(first: {skipped[0]['source']}: {skipped[0]['reason']}); attribution needs the training images"
        )
    images = [found[int(shard_ids[p])][0] for p in keep]
    records = RecordSet.from_arrays(model_images(images, image_size), conditions[keep], ids=shard_ids[keep],
                                    sources=[found[int(shard_ids[p])][1] for p in keep])
    return LoadedRecords(records, skipped, images, embeddings[keep])


def _id_of(source: str, listed: dict[int, list[str]]) -> int:
    return next((rid for rid, srcs in listed.items() if source in srcs), -1)


# -- the feature cache of a record set ------------------------------------------------------------------------


def set_digest(records: RecordSet) -> str:
    """16 hex digits naming a training set: its ids and conditions (a change of either is another set)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(records.ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(records.conditions.numpy(), dtype=np.float32).round(5).tobytes())
    return h.hexdigest()[:16]


def cache_dir(root: str | os.PathLike, model_hash: str, records: RecordSet, *, neighbours: int,
              prune: bool = False) -> Path:
    """``root/<model hash[:16]>-n<neighbours>-<set digest>``, every folder created 0700.

    ``prune=True`` (one shard per ``root``): older sets of the same model and neighbours under ``root`` are deleted,
    since their features are stale and may hold records removed since."""
    from index.fs import make_private_dir

    base = Path(root).expanduser()
    missing = [p for p in (base, *base.parents) if not p.exists()]
    for folder in reversed(missing):  # every folder created here is owner-only, not just the last one
        make_private_dir(folder)
    make_private_dir(base)
    prefix = f"{model_hash[:16]}-n{neighbours}-"
    target = base / f"{prefix}{set_digest(records)}"
    for old in base.glob(f"{prefix}*") if prune else ():
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return make_private_dir(target)


__all__ = ["CACHE_FOLDER", "LoadedRecords", "cache_dir", "conditions_from_embeddings", "drop_cached_records", "folder_records",
           "forget_hook", "index_cache_root", "model_images", "query_records", "read_images", "set_digest",
           "shard_records"]
