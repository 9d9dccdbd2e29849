"""``build_index``: private corpus → open_clip embeddings → DP-safe FAISS shard, crash-safe and resumable.

The runner of the reader (:mod:`index.sources`) → mapper (:mod:`index.encoder`, :mod:`index.ingest`) →
writer (:mod:`index.store`, :mod:`index.shard`) pipeline. A build either commits a complete new shard
generation or leaves the previous index exactly as it was; re-running an interrupted build reuses the
embeddings it had checkpointed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import fs, store
from index.commit import (
    BeforeCommit,
    View,
    check_encoder,
    commit,
    describe,
    drop_unreferenced,
    open_view,
    view_of,
)
from index.encoder import Encoder, load_encoder, torch_threads
from index.errors import IndexInputError
from index.ingest import ingest
from index.quantizer import PublicQuantizer, train_public_quantizer
from index.ray_encode import ray_encode_batches, require_ray
from index.resume import Checkpoints
from index.safety import IndexKind, resolve_index_type
from index.shard import check_shard_storage
from index.sources import DEFAULT_MAX_PIXELS, read_source
from index.storage import DEFAULT as DEFAULT_STORAGE
from index.storage import check_storage

_STAT_FIELDS = ("shard", "added", "encoded", "reused", "duplicates", "skipped", "seconds", "encoder_seconds")
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, kw_only=True)
class BuildReport:
    """Outcome of a build or add: the index ``info()`` after the commit plus this operation's counts.

    Attributes:
        info: ``PrivateIndex.info()`` of the committed index.
        shard: the shard written.
        added: records stored from this source (new ones plus reused embeddings).
        encoded: images run through the encoder in this call (resumed ones are not re-encoded).
        reused: records whose embedding came from a checkpoint or the existing shard.
        duplicates: exact duplicates not stored again (within the source, the shard or other shards).
        skipped: inputs skipped in this call (the list, with reasons, is ``info["skipped"]``).
        new_ids: content ids new to the shard in this call (what ``before_commit`` received).
        dropped_ids: content ids that left the shard because a ``build`` (not ``add``) replaced it with a source
            that no longer holds them (never passed to ``before_commit``; empty for ``add``).
        seconds: wall time of the ingest; encoder_seconds: the part spent in the encoder.
    """

    info: dict[str, Any]
    shard: str
    added: int
    encoded: int
    reused: int
    duplicates: int
    skipped: int
    seconds: float
    encoder_seconds: float
    new_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    dropped_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``dprdm index build --json``; equal to ``PrivateIndex.open(dir).info()``."""
        return dict(self.info)


def _validate(shard: str, batch_size: int) -> None:
    if not _SHARD_NAME.fullmatch(shard):
        raise IndexInputError(
            f"shard name '{shard}' is invalid; use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if batch_size < 1:
        raise IndexInputError(f"--batch-size must be >= 1, found {batch_size}; pass a positive batch size")


def _new_manifest(encoder: Encoder, kind: IndexKind, trained: PublicQuantizer | None) -> dict[str, Any]:
    """The manifest of a new, empty index."""
    quantizer: dict[str, Any] = {"provenance": "none"}
    faiss_desc = "IDMap2,Flat"
    if trained is not None:
        quantizer = dict(trained.to_dict(), file="quantizer.faiss")
        faiss_desc = f"IVF{trained.nlist},Flat"
    now = store.utc_now()
    return {
        "format": "dprdm-index",
        "format_version": store.FORMAT_VERSION,
        "created": now,
        "updated": now,
        "dim": encoder.dim,
        "encoder": {
            "model_id": encoder.model_id,
            "sha256": encoder.sha256,
            "dim": encoder.dim,
            **encoder.spec.to_dict(),
        },
        "index_type": kind.value,
        "faiss": faiss_desc,
        "metric": "inner_product",
        "quantizer": quantizer,
        "shards": {},
    }


def build_index(
    source: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    shard: str = "default",
    model: str | None = None,
    pretrained: str | None = None,
    batch_size: int = 64,
    public_train: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    index_type: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_batch: Callable[[int], None] | None = None,
    append: bool = False,
    before_commit: BeforeCommit | None = None,
    before_drop: BeforeCommit | None = None,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    storage: str | None = None,
) -> BuildReport:
    """Build (or rebuild) shard ``shard`` of the index at ``index_dir`` from ``source``.

    A new index is created 0700 with the given encoder and index type. On an existing index the encoder
    and index type are the index's own (passing a different ``model`` is refused). The shard becomes
    exactly the records of ``source`` (``append=True``, used by ``PrivateIndex.add``, keeps existing rows).

    Args:
        source: an image folder (recursive), a ``save_to_disk`` directory, or a .parquet/.arrow file.
        index_dir: the index directory (created if missing).
        shard: shard (compartment) name; a record belongs to exactly one shard.
        model, pretrained: encoder, as in :func:`index.load_encoder` (None: the bundled tiny encoder).
        batch_size: images per encoder batch (and per resume checkpoint).
        public_train: ``.npy`` of PUBLIC embeddings to train the ivf-flat coarse quantiser.
        image_column: dataset column holding the images (default: the first Image feature).
        num_threads: torch threads while encoding.
        progress: show a tqdm bar (images/s) on stderr.
        index_type: ``flat`` (default) or ``ivf-flat``; anything trained on private data is refused.
        max_pixels: decompression-bomb cap per image.
        on_batch: called with the running count of encoded images after each checkpointed batch.
        append: keep the shard's existing records and add the new ones.
        before_commit: called as ``before_commit(shard, ids)`` with the content ids new to the shard (after
            dedupe; possibly empty) after embedding, right before the manifest commit; if it raises, nothing is
            committed and the exception propagates.
        before_drop: called as ``before_drop(shard, ids)`` with the content ids a rebuild drops from the shard
            (records its new source no longer holds), before ``before_commit``, with the same semantics.
        engine: ``local`` (default: encode in this process) or ``ray`` (encode on Ray Data with ``workers``
            encoder actors, joining ``ray_address`` or starting a local Ray; needs the ``scale`` extra). Everything
            but the encoding (reader, dedupe, checkpoints, commit) runs here either way.
        storage: how a NEW shard stores its rows: ``float32`` (default), ``float16`` or ``int8`` (fixed range,
            :mod:`index.storage`; flat indexes only). An existing shard keeps its own storage (passing another one
            is refused: drop the shard first).

    Returns:
        A :class:`BuildReport` whose ``to_dict()`` equals ``PrivateIndex.open(index_dir).info()``.

    Raises:
        IndexInputError: bad source, arguments, shard name, model, or a different encoder than the index's.
        UnsafeIndexError: an index type that would break the DP sensitivity bound.
        IndexCorruptError: the existing index is damaged (it is left untouched).
    """
    report, _ = run_build(
        source, index_dir, shard=shard, model=model, pretrained=pretrained, batch_size=batch_size,
        public_train=public_train, image_column=image_column, num_threads=num_threads, progress=progress,
        index_type=index_type, max_pixels=max_pixels, on_batch=on_batch, append=append,
        before_commit=before_commit, before_drop=before_drop, engine=engine, workers=workers,
        ray_address=ray_address, storage=storage,
    )  # fmt: skip
    return report


def _shard_storage(existing: Any, storage: str | None, kind: IndexKind) -> str:
    """The storage of the shard written: its own if it exists (fixed at creation), else ``storage`` or float32."""
    if existing is None:
        return check_shard_storage(storage or DEFAULT_STORAGE, kind)
    if storage is not None and storage != existing.storage:
        raise IndexInputError(
            f"shard '{existing.name}' is stored as {existing.storage}; a shard's storage is fixed at creation: drop "
            f"--storage, or drop the shard first ('dprdm index drop-shard') to rebuild it as {storage}"
        )
    return str(existing.storage)


def run_build(
    source: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    shard: str,
    model: str | None = None,
    pretrained: str | None = None,
    batch_size: int,
    public_train: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    num_threads: int | None,
    progress: bool,
    index_type: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_batch: Callable[[int], None] | None = None,
    append: bool,
    before_commit: BeforeCommit | None,
    before_drop: BeforeCommit | None = None,
    known: View | None = None,
    encoder: Encoder | None = None,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    storage: str | None = None,
) -> tuple[BuildReport, View]:
    """:func:`build_index`, reusing the shard views of ``known`` (and its loaded ``encoder``) when current.

    Returns the report and the committed view, so the facade adopts it without opening the index again.
    """
    _validate(shard, batch_size)
    if engine not in ("local", "ray"):
        raise IndexInputError(f"--engine must be 'local' or 'ray', found {engine!r}; pass one of them")
    if storage is not None:
        check_storage(storage)
    if engine == "ray":
        require_ray()  # before anything is read or created
    path = fs.expand_user(index_dir).resolve()
    if path.exists() and not path.is_dir():
        raise IndexInputError(f"--index '{index_dir}' exists and is not a directory; pass a directory path")
    records = read_source(source, image_column=image_column, max_pixels=max_pixels, exclude=path)
    fresh = not (path / store.MANIFEST).exists()
    trained: PublicQuantizer | None = None
    if fresh:  # validate everything before the directory is created
        if append:
            raise IndexInputError(f"'{index_dir}' is not a dprdm index; create it with 'dprdm index build'")
        kind = resolve_index_type(index_type or IndexKind.FLAT.value, public_train=public_train is not None)
        if kind is IndexKind.FLAT and public_train is not None:
            raise IndexInputError(
                "--public-train is only used with --index-type ivf-flat; drop it or pass --index-type ivf-flat"
            )
        check_shard_storage(storage or DEFAULT_STORAGE, kind)
        encoder = load_encoder(model, pretrained, num_threads=num_threads)
        trained = train_public_quantizer(public_train, encoder.dim) if public_train is not None else None
    with store.writer_lock(path):
        if fresh:
            if (path / store.MANIFEST).exists():
                raise IndexInputError(f"index '{index_dir}' was created by another process meanwhile; re-run")
            if trained is not None:
                store.write_faiss(trained.index, path / "quantizer.faiss")
            top = _new_manifest(encoder, kind, trained)
            current = View(path=path, top=top, shards={}, mmap=False)
        else:
            current = open_view(path, known=known)
            top = current.top
            if index_type is not None or public_train is not None:
                raise IndexInputError(
                    f"index '{index_dir}' already exists with type '{top['index_type']}'; "
                    "the index type is fixed at creation: drop --index-type/--public-train or use a new --index"
                )
            drop_unreferenced(path, top)
            if model is not None or pretrained is not None:
                encoder = load_encoder(model, pretrained, num_threads=num_threads)
            elif encoder is None:
                spec = top["encoder"]
                encoder = load_encoder(spec.get("model"), spec.get("pretrained"), num_threads=num_threads)
            check_encoder(top, encoder, path)
        existing = current.shards.get(shard)
        storage = _shard_storage(existing, storage, IndexKind(top["index_type"]))
        other_ids: set[int] = set()
        for other in current.shards.values():
            if other.name != shard:
                other_ids.update(other.ids.tolist())
        encode_batches = None
        if engine == "ray":
            encode_batches = ray_encode_batches(
                encoder, batch_size=batch_size, workers=workers, address=ray_address, num_threads=num_threads
            )
        with torch_threads(num_threads):
            content, stats = ingest(
                records, shard=shard, encoder=encoder, checkpoints=Checkpoints(path, encoder.sha256),
                existing=existing, append=append, other_shard_ids=other_ids, batch_size=batch_size,
                progress=progress, on_batch=on_batch, encode_batches=encode_batches, storage=storage,
            )  # fmt: skip
        before = existing.ids if existing is not None else np.empty(0, dtype=np.int64)
        new_ids = content.ids[~np.isin(content.ids, before)]
        dropped_ids = before[~np.isin(before, content.ids)]
        new_top = commit(
            path, top, {shard: content}, dict(stats, op="add" if append else "build"),
            before_commit=before_commit, hook_ids={shard: new_ids},
            before_drop=before_drop, drop_ids={shard: dropped_ids} if len(dropped_ids) else None,
        )  # fmt: skip
    view = view_of(path, new_top, mmap=False, known=current)
    report = BuildReport(
        info=describe(view), new_ids=new_ids, dropped_ids=dropped_ids,
        **{k: stats[k] for k in _STAT_FIELDS},
    )  # fmt: skip
    return report, view
