"""Read an audit's inputs from a built index: the shard's embeddings and its ledger scope's (k, q, σ, δ).

Operator-only: reading the shard's rows needs direct read access to the index files (the data owner's); the
audit that uses them is uncharged and its output is never for analysts (see :mod:`pipeline.cli_audit`).

Read-only: the ledger is opened with ``read_only=True`` (never created, never charged) and the index with
``PrivateIndex.open`` (which verifies manifests and sizes). Scopes are named after shards
(see :mod:`pipeline.retrieve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline._files import expand_user
from pipeline.errors import PipelineInputError

__all__ = ["scope_and_embeddings"]


def scope_and_embeddings(index_dir: str | Path, shard: str | None) -> tuple[dict[str, Any], np.ndarray]:
    """Return ``({"k", "q", "sigma", "delta", "queries"}, embeddings)`` of one shard of an index.

    Args:
        index_dir: the index directory (holding ``budget.sqlite``).
        shard: shard name; None picks the only shard (an error when there are several).

    Returns:
        The scope's mechanism, δ and planned queries (charged + remaining), and the shard's (n, d) rows.

    Raises:
        PipelineInputError: no such directory, several shards and none named, unknown shard.
        IndexStoreError, AccountantError: unreadable index or ledger (their own exit codes).
    """
    from index import PrivateIndex
    from pipeline.ledgers import index_ledger

    directory = expand_user(index_dir)
    if not directory.is_dir():
        raise PipelineInputError(
            f"--index '{directory}' is not a directory; pass the directory of 'dprdm index build'"
        )
    index = PrivateIndex.open(directory)
    names = list(index.shard_names)
    if shard is None:
        if len(names) != 1:
            raise PipelineInputError(f"index '{directory}' has shards {names}; pick one with --shard NAME")
        shard = names[0]
    if shard not in names:
        raise PipelineInputError(
            f"unknown shard {shard!r}; the index has {names}; pass one of them with --shard"
        )
    with index_ledger(index, read_only=True) as ledger:  # the index's one ledger, id checked, never written
        status = ledger.status(shard)
    scope = {
        "k": int(status.k),
        "q": float(status.q),
        "sigma": float(status.sigma),
        "delta": float(status.delta),
        "queries": max(1, int(status.queries_charged + status.queries_remaining)),
    }
    chosen = index.shard(shard)
    _ = chosen.faiss_index, chosen.ids  # load (and so check) every stored part: a damaged shard is refused
    return scope, np.asarray(chosen.embeddings, dtype=np.float32)
