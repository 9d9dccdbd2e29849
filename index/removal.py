"""Removal of records by content id or by source, and of whole shards, without re-encoding anything.

Removal writes new generations of the affected shards without the records (vectors, ids, metadata and the
faiss id map are all rebuilt from the remaining rows), commits the manifest atomically, then deletes the
old generations and every resume checkpoint, so the removed embeddings leave the index directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index import fs, store
from index.commit import BeforeCommit, View, commit, open_view, view_of
from index.errors import IndexInputError
from index.shard import ShardContent


@dataclass(frozen=True, kw_only=True)
class RemoveReport:
    """Outcome of :meth:`index.PrivateIndex.remove`.

    Attributes:
        removed: number of records removed (over all shards).
        shards: records removed per shard (only shards that lost records).
        unmatched_ids: the requested ids that matched no record.
        unmatched_sources: the requested sources that matched no record (as given).
        removed_ids: content ids removed per shard (what ``before_commit`` received).
    """

    removed: int
    shards: dict[str, int]
    unmatched_ids: tuple[int, ...] = ()
    unmatched_sources: tuple[str, ...] = ()
    removed_ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``dprdm index remove --json``)."""
        return {
            "removed": self.removed,
            "shards": dict(self.shards),
            "unmatched_ids": list(self.unmatched_ids),
            "unmatched_sources": list(self.unmatched_sources),
        }


def _source_matches(stored: str, wanted: str) -> bool:
    """Exact path/row, or anything under a folder (``/``) or dataset file (``#``)."""
    return stored == wanted or stored.startswith((wanted + os.sep, wanted + "#"))


def _normalise_source(raw: str) -> str:
    head, sep, tail = str(raw).partition("#")
    path = str(fs.expand_user(head).resolve()) if head else head
    return path + sep + tail


def remove_records(
    index_dir: Path,
    *,
    ids: Iterable[int] | None,
    sources: Iterable[str] | None,
    before_commit: BeforeCommit | None = None,
    known: View | None = None,
) -> tuple[RemoveReport, View]:
    """Remove matching records from every shard; return the report and the committed view.

    Raises:
        IndexInputError: no selector given, an id that is not a non-negative integer, or no selector matched
            anything (the message names them; nothing is changed).
    """
    id_list = [int(i) for i in ids] if ids is not None else []
    raw_sources = [str(s) for s in sources] if sources is not None else []
    if not id_list and not raw_sources:
        raise IndexInputError("nothing to remove: pass at least one --id ID or --source PATH")
    if any(i < 0 for i in id_list):
        raise IndexInputError("record ids are non-negative 63-bit integers; check the --id values")
    wanted_sources = {raw: _normalise_source(raw) for raw in raw_sources}
    wanted_ids = set(id_list)
    with store.writer_lock(index_dir):
        current = open_view(index_dir, known=known)
        updates: dict[str, ShardContent] = {}
        removed_ids: dict[str, np.ndarray] = {}
        matched_ids: set[int] = set()
        matched_sources: set[str] = set()
        for shard in current.shards.values():
            rows, aliases = shard.metadata()
            drop = {r.id for r in rows if r.id in wanted_ids}
            matched_ids |= drop
            for raw, wanted in wanted_sources.items():
                hits = {r.id for r in rows + aliases if _source_matches(r.source, wanted)}
                if hits:
                    matched_sources.add(raw)
                    drop |= hits
            if not drop:
                continue
            keep = np.array([r.id not in drop for r in rows], dtype=bool)
            ids_now = shard.ids
            updates[shard.name] = ShardContent(
                name=shard.name,
                ids=ids_now[keep],
                embeddings=np.asarray(shard.embeddings)[keep],
                rows=[r for r, k in zip(rows, keep, strict=True) if k],
                aliases=[a for a in aliases if a.id not in drop],
                skipped=list(shard.manifest.get("skipped", [])),
                created=shard.manifest.get("created", store.utc_now()),
                storage=shard.storage,
            )
            removed_ids[shard.name] = ids_now[~keep]
        unmatched_ids = tuple(i for i in dict.fromkeys(id_list) if i not in matched_ids)
        unmatched_sources = tuple(s for s in dict.fromkeys(raw_sources) if s not in matched_sources)
        if not updates:
            parts = []
            if unmatched_ids:
                parts.append("--id " + ", ".join(str(i) for i in unmatched_ids))
            if unmatched_sources:
                parts.append("--source " + ", ".join(f"'{s}'" for s in unmatched_sources))
            raise IndexInputError(
                f"nothing removed from index '{index_dir}': no record matches {'; '.join(parts)}; "
                "list the stored ids and sources with 'dprdm index ls'"
            )
        removed = sum(len(v) for v in removed_ids.values())
        new_top = commit(
            index_dir, current.top, updates, {"op": "remove", "removed": removed, "shards": sorted(updates)},
            before_commit=before_commit, hook_ids=removed_ids,
        )  # fmt: skip
    report = RemoveReport(
        removed=removed, shards={n: len(v) for n, v in removed_ids.items()}, unmatched_ids=unmatched_ids,
        unmatched_sources=unmatched_sources, removed_ids=removed_ids,
    )  # fmt: skip
    return report, view_of(index_dir, new_top, mmap=False, known=current)


def drop_shard(
    index_dir: Path, name: str, *, before_commit: BeforeCommit | None = None, known: View | None = None
) -> tuple[np.ndarray, View]:
    """Remove shard ``name`` and all its records; return the dropped ids and the committed view.

    Raises:
        IndexInputError: no such shard.
    """
    with store.writer_lock(index_dir):
        current = open_view(index_dir, known=known)
        if name not in current.shards:
            raise IndexInputError(
                f"no shard '{name}' in index '{index_dir}' (shards: {sorted(current.shards)}); pass one of them"
            )
        ids = current.shards[name].ids
        new_top = commit(
            index_dir, current.top, {}, {"op": "drop-shard", "shard": name, "removed": int(len(ids))},
            dropped=[name], before_commit=before_commit, hook_ids={name: ids},
        )  # fmt: skip
    return ids, view_of(index_dir, new_top, mmap=False, known=current)
