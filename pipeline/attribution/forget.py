"""Drop removed records from the attribution feature cache of an index: light, so ``index remove`` stays fast.

The features of a shard's records are cached under ``<index dir>/attribution/<shard>/`` (``dprdm attribute --index``).
They are derived from the records, so when records leave the index (``index remove``, ``drop-shard``, a rebuild that
drops them) their rows must leave the cache too, before the index commits: :func:`forget_hook` wraps the index's
``before_commit`` hook to do that. Nothing heavy is imported unless a cache exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_FOLDER = "attribution"  # <index dir>/attribution/<shard>/<model>-n<k>-<set digest>/<method>-K-P-s.npz


def index_cache_root(index_dir: str | os.PathLike, shard: str) -> Path:
    """Where the features of a shard's records are cached: ``<index dir>/attribution/<shard>`` (private data)."""
    return Path(index_dir).expanduser() / CACHE_FOLDER / shard


def drop_cached_records(index_dir: str | os.PathLike, ids: Iterable[int], *, shard: str | None = None) -> int:
    """Remove the rows of ``ids`` from every cached feature file of an index (of ``shard`` only, if given).

    Call it before an index change commits (``index remove``, ``drop-shard``, a rebuild that drops records), so no
    feature derived from a removed record stays on disk. A file left with no row is deleted, then empty folders.

    Returns:
        The number of rows removed (0 when nothing was cached).
    """
    root = Path(index_dir).expanduser() / CACHE_FOLDER
    if shard is not None:
        root = root / shard
    if not root.is_dir():
        return 0
    from pipeline.attribution.cache import FeatureCache, read_entry  # torch, only when there is a cache

    drop = np.asarray(sorted({int(i) for i in ids}), dtype=np.int64)
    removed = 0
    for path in sorted(root.rglob("*.npz")):
        feats = read_entry(path)
        kept = feats.drop(drop)
        if len(kept) == len(feats):
            continue
        removed += len(feats) - len(kept)
        if len(kept) == 0:
            path.unlink(missing_ok=True)
        else:
            FeatureCache(path.parent, feats.model_hash).put(kept)
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())], key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed


def forget_hook(index_dir: str | os.PathLike,
                then: Callable[[str, np.ndarray], None] | None = None) -> Callable[[str, np.ndarray], None]:
    """A ``before_commit(shard, ids)`` hook for ``PrivateIndex.remove`` / ``drop_shard``: run ``then`` (e.g. the
    ledger's ``membership_hook``, which may refuse) and then drop the records' cached attribution features."""

    def hook(shard: str, ids: np.ndarray) -> None:
        if then is not None:
            then(shard, ids)
        drop_cached_records(index_dir, ids, shard=shard)

    return hook


__all__ = ["CACHE_FOLDER", "drop_cached_records", "forget_hook", "index_cache_root"]
