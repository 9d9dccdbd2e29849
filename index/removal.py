"""Removal of records by content id or by source, without re-encoding anything.

Removal writes new generations of the affected shards without the records (vectors, ids, metadata and the
faiss id map are all rebuilt from the remaining rows), commits the manifest atomically, then deletes the
old generations and every resume checkpoint, so the removed embeddings leave the index directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from index import store
from index.errors import IndexInputError
from index.paths import expand_user
from index.private_index import PrivateIndex, commit
from index.shard import ShardContent


def _source_matches(stored: str, wanted: list[str]) -> bool:
    """Exact path/row, or anything under a folder (``/``) or dataset file (``#``)."""
    return any(stored == w or stored.startswith((w + os.sep, w + "#")) for w in wanted)


def _normalise_sources(sources: Iterable[str]) -> list[str]:
    out = []
    for raw in sources:
        head, sep, tail = str(raw).partition("#")
        path = str(expand_user(head).resolve()) if head else head
        out.append(path + sep + tail)
    return out


def remove_records(index_dir: Path, *, ids: Iterable[int] | None, sources: Iterable[str] | None) -> int:
    """Remove matching records from every shard; return the number removed (0 if none matched).

    Raises:
        IndexInputError: neither ids nor sources were given, or an id is not a non-negative integer.
    """
    id_list = [int(i) for i in ids] if ids is not None else []
    wanted_sources = _normalise_sources(sources) if sources is not None else []
    if not id_list and not wanted_sources:
        raise IndexInputError("nothing to remove: pass at least one --id ID or --source PATH")
    if any(i < 0 for i in id_list):
        raise IndexInputError("record ids are non-negative 63-bit integers; check the --id values")
    wanted_ids = set(id_list)
    with store.writer_lock(index_dir):
        current = PrivateIndex.open(index_dir)
        updates: dict[str, ShardContent] = {}
        removed = 0
        for shard in current.shards():
            rows, aliases = shard.metadata()
            drop = {r.id for r in rows if r.id in wanted_ids}
            if wanted_sources:
                drop |= {r.id for r in rows + aliases if _source_matches(r.source, wanted_sources)}
            if not drop:
                continue
            keep = np.array([r.id not in drop for r in rows], dtype=bool)
            updates[shard.name] = ShardContent(
                name=shard.name,
                ids=shard.ids[keep],
                embeddings=np.asarray(shard.embeddings)[keep],
                rows=[r for r, k in zip(rows, keep, strict=True) if k],
                aliases=[a for a in aliases if a.id not in drop],
                skipped=list(shard.manifest.get("skipped", [])),
                created=shard.manifest.get("created", store.utc_now()),
            )
            removed += int((~keep).sum())
        if removed:
            commit(
                index_dir,
                current.manifest,
                updates,
                {"op": "remove", "removed": removed, "shards": sorted(updates)},
            )
    return removed
