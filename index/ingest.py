"""Run the reader → encoder stages for one shard: dedupe, reuse known embeddings, encode the rest in batches.

Duplicates: a record whose content id is already in the shard (or earlier in this source) is stored once
and its extra sources are kept as aliases. A record whose id lives in *another* shard is not stored again
(each record belongs to exactly one shard) and is counted as a duplicate.

Resume: every encoded batch is checkpointed before the next one starts (:mod:`index.resume`), so a crash,
Ctrl-C or ``kill -9`` loses at most one batch of work and never touches the committed index.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from index.encoder import Encoder
from index.resume import Checkpoints
from index.shard import Shard, ShardContent
from index.sources import Decoded, Skipped
from index.store import MetadataRow, utc_now

if TYPE_CHECKING:
    import torch


@dataclass
class _State:
    known: dict[int, np.ndarray]
    other_shards: set[int]
    seen: set[int]
    order: list[MetadataRow] = field(default_factory=list)
    aliases: list[MetadataRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: int = 0
    reused: int = 0


class _ToEncode:
    """Streams decoded records, handling skips/duplicates/reuse in-line, yielding only rows that need encoding."""

    def __init__(
        self, records: Iterable[Decoded | Skipped], preprocess: Callable[[Any], torch.Tensor], state: _State
    ):
        self.records = records
        self.preprocess = preprocess
        self.state = state

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        st = self.state
        for rec in self.records:
            if isinstance(rec, Skipped):
                st.skipped.append(rec.to_dict())
            elif rec.id in st.seen:
                st.aliases.append(MetadataRow(rec.id, rec.source))
                st.duplicates += 1
            elif rec.id in st.other_shards:
                st.duplicates += 1
            else:
                st.seen.add(rec.id)
                st.order.append(MetadataRow(rec.id, rec.source))
                if rec.id in st.known:
                    st.reused += 1
                else:
                    yield rec.id, self.preprocess(rec.image)


EncodeBatches = Callable[[Iterable[tuple[int, Any]]], Iterator[tuple[np.ndarray, np.ndarray]]]


def _as_is(image: Any) -> Any:
    return image


def _encode(
    records: Iterable[Decoded | Skipped],
    encoder: Encoder,
    state: _State,
    batch_size: int,
    encode_batches: EncodeBatches | None,
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """``(ids, rows, encoder seconds)`` per batch: in this process, or from ``encode_batches`` (another engine,
    whose seconds are the wait for each batch)."""
    if encode_batches is None:
        for ids, pixels in _batches(_ToEncode(records, encoder.preprocess, state), batch_size):
            tick = time.perf_counter()
            rows_out = encoder.encode_pixels(pixels)
            yield ids, rows_out, time.perf_counter() - tick
        return
    stream = encode_batches(_ToEncode(records, _as_is, state))
    while True:
        tick = time.perf_counter()
        item = next(stream, None)
        if item is None:
            return
        ids, rows_out = item
        yield np.asarray(ids, dtype=np.int64), np.asarray(rows_out, dtype=np.float32), time.perf_counter() - tick


def _batches(
    items: Iterable[tuple[int, torch.Tensor]], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(ids, stacked pixels)`` of each run of ``batch_size`` items, the last one possibly shorter (in-process,
    as a single-process ``DataLoader`` with ``drop_last=False`` batches an iterable)."""
    import torch

    stream = iter(items)
    while batch := list(islice(stream, batch_size)):
        yield np.array([i for i, _ in batch], dtype=np.int64), torch.stack([t for _, t in batch])


def ingest(
    records: Iterable[Decoded | Skipped],
    *,
    shard: str,
    encoder: Encoder,
    checkpoints: Checkpoints,
    existing: Shard | None,
    append: bool,
    other_shard_ids: set[int],
    batch_size: int,
    progress: bool,
    on_batch: Callable[[int], None] | None,
    encode_batches: EncodeBatches | None = None,
    storage: str = "float32",
) -> tuple[ShardContent, dict[str, Any]]:
    """Produce the new content of ``shard`` and the operation statistics.

    Args:
        records: the reader's output.
        existing: the current generation of this shard, if any (its embeddings are reused, never re-encoded).
        append: True for ``add`` (keep existing rows), False for ``build`` (the shard becomes exactly the source).
        other_shard_ids: ids stored in other shards (skipped as duplicates).
        on_batch: called with the running count of encoded images after each checkpointed batch.
        encode_batches: another encoding engine (``--engine ray``): given the ``(id, RGB image)`` records that need
            encoding (after skips, dedupe and reuse), yields ``(ids, unit float32 rows)`` batches in any order; each
            batch is checkpointed here as it arrives, exactly like a local batch. None: encode in this process.
        storage: the format the shard's rows are written in (:mod:`index.storage`).
    """
    started = time.perf_counter()
    known = checkpoints.load()
    base_rows: list[MetadataRow] = []
    base_aliases: list[MetadataRow] = []
    base_skipped: list[dict[str, str]] = []
    if existing is not None:
        rows, aliases = existing.metadata()
        known.update(zip(existing.ids.tolist(), existing.embeddings, strict=True))
        if append:
            base_rows, base_aliases = rows, aliases
            base_skipped = list(existing.manifest.get("skipped", []))
    state = _State(known=known, other_shards=other_shard_ids, seen={r.id for r in base_rows})
    state.aliases.extend(base_aliases)
    encoded, encoder_seconds = 0, 0.0
    with tqdm(desc=f"encoding shard '{shard}'", unit="img", file=sys.stderr, disable=not progress) as bar:
        for ids, rows_out, seconds in _encode(records, encoder, state, batch_size, encode_batches):
            encoder_seconds += seconds
            checkpoints.save(ids, rows_out)
            known.update(zip(ids.tolist(), rows_out, strict=True))
            encoded += len(ids)
            bar.update(len(ids))
            if on_batch is not None:
                on_batch(encoded)
    all_rows = base_rows + state.order
    dim = encoder.dim
    embeddings = (
        np.stack([known[r.id] for r in all_rows]).astype(np.float32)
        if all_rows
        else np.zeros((0, dim), np.float32)
    )
    content = ShardContent(
        name=shard,
        ids=np.array([r.id for r in all_rows], dtype=np.int64),
        embeddings=embeddings,
        rows=all_rows,
        aliases=state.aliases,
        skipped=base_skipped + state.skipped,
        created=existing.manifest.get("created", utc_now()) if existing is not None else utc_now(),
        storage=storage,
    )
    seconds = time.perf_counter() - started
    stats = {
        "shard": shard,
        "added": len(state.order),
        "encoded": encoded,
        "reused": state.reused,
        "duplicates": state.duplicates,
        "skipped": len(state.skipped),
        "seconds": round(seconds, 3),
        "encoder_seconds": round(encoder_seconds, 3),
    }
    return content, stats
