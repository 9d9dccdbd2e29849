"""dprdm ``index``: a private image corpus → open_clip embeddings → a DP-safe, sharded FAISS index on disk.

Public API (everything else is private)::

    build_index(source, index_dir, *, shard="default", model=None, ..., before_commit=None) -> BuildReport
    PrivateIndex.open(index_dir, *, mmap=False, encoder=None, threads=None) -> PrivateIndex
        .add / .remove / .drop_shard / .records / .info / .bind_ledger / .ledger_binding / .set_encoder
    Shard.restrict / .score / .ids_at / .rows   (the only primitives the DP mechanism uses)
    MemoryShard(embeddings, ids=None, *, quantizer=None, nprobe=1, storage="float32", threads=None)
    load_encoder(model=None, pretrained=None, *, num_threads=None) -> Encoder

Names are imported on first use (PEP 562), so ``import index`` and ``import index.fs`` load neither torch nor faiss
(``dprdm index info``, the pipeline's file helpers). The torchvision shim (:mod:`index._torchvision_compat`) runs
where open_clip and diffusers are imported (:mod:`index.encoder`, :mod:`pipeline.decoders`, :mod:`pipeline.train`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from index.errors import (
    IndexCorruptError,
    IndexInputError,
    IndexStoreError,
    LedgerBindingError,
    StaleShardError,
    UnsafeIndexError,
)
from index.fs import expand_user

if TYPE_CHECKING:
    from index.build import BuildReport, build_index
    from index.encoder import DEFAULT_MODEL_DIR, Encoder, load_encoder
    from index.private_index import PrivateIndex
    from index.removal import RemoveReport
    from index.rows import MemoryShard
    from index.safety import IndexKind, is_dp_safe, resolve_index_type
    from index.shard import Shard
    from index.sources import content_id

__all__ = [
    "DEFAULT_MODEL_DIR",
    "BuildReport",
    "Encoder",
    "IndexCorruptError",
    "IndexInputError",
    "IndexKind",
    "IndexStoreError",
    "LedgerBindingError",
    "MemoryShard",
    "PrivateIndex",
    "RemoveReport",
    "Shard",
    "StaleShardError",
    "UnsafeIndexError",
    "build_index",
    "content_id",
    "expand_user",
    "is_dp_safe",
    "load_encoder",
    "resolve_index_type",
]

_LAZY = {
    "BuildReport": "index.build",
    "build_index": "index.build",
    "DEFAULT_MODEL_DIR": "index.encoder",
    "Encoder": "index.encoder",
    "load_encoder": "index.encoder",
    "PrivateIndex": "index.private_index",
    "RemoveReport": "index.removal",
    "MemoryShard": "index.rows",
    "IndexKind": "index.safety",
    "is_dp_safe": "index.safety",
    "resolve_index_type": "index.safety",
    "Shard": "index.shard",
    "content_id": "index.sources",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'index' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
