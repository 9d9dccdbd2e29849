"""dprdm ``index``: a private image corpus → open_clip embeddings → a DP-safe, sharded FAISS index on disk.

Public API (everything else is private)::

    build_index(source, index_dir, *, shard="default", model=None, ..., before_commit=None) -> BuildReport
    PrivateIndex.open(index_dir, *, mmap=False, encoder=None) -> PrivateIndex
        .add / .remove / .drop_shard / .records / .info / .bind_ledger / .ledger_binding / .set_encoder
    Shard.restrict / .score / .ids_at / .rows   (the only primitives the DP mechanism uses)
    MemoryShard(embeddings, ids=None, *, quantizer=None, nprobe=1)   (same primitives over arrays)
    load_encoder(model=None, pretrained=None, *, num_threads=None) -> Encoder
"""

import index._torchvision_compat  # noqa: F401,I001  (must run before anything imports open_clip/torchvision)

from index.build import BuildReport, build_index
from index.encoder import DEFAULT_MODEL_DIR, Encoder, load_encoder
from index.errors import (
    IndexCorruptError,
    IndexInputError,
    IndexStoreError,
    LedgerBindingError,
    StaleShardError,
    UnsafeIndexError,
)
from index.fs import expand_user
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
