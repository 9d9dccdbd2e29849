"""Resume checkpoints: embeddings computed by an unfinished build, kept so a re-run does not re-encode them.

Each encoded batch is appended as an atomic ``chunk-<n>.npz`` (ids + rows) under
``DIR/work/<encoder sha256[:16]>/``; chunks are only valid for the encoder that wrote them. The work
directory is private (0700/0600), is never read by queries, and is deleted when a build commits or when
records are removed (so a removed record's embedding does not survive in a checkpoint).
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from index import fs, store

logger = logging.getLogger(__name__)


class Checkpoints:
    """Append-only store of (id -> embedding) chunks for one index and one encoder."""

    def __init__(self, index_dir: Path, encoder_sha256: str) -> None:
        self.path = index_dir / "work" / encoder_sha256[:16]
        self._next = 0

    def load(self) -> dict[int, np.ndarray]:
        """Every embedding saved by earlier interrupted runs; unreadable chunks are ignored (they are a cache)."""
        found: dict[int, np.ndarray] = {}
        if not self.path.is_dir():
            return found
        for chunk in sorted(self.path.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    ids, rows = data["ids"], data["embeddings"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                logger.warning(
                    "ignoring unreadable resume checkpoint %s (%s)", chunk.name, type(err).__name__
                )
                continue
            found.update(zip(ids.tolist(), rows, strict=True))
            self._next = max(self._next, int(chunk.stem.split("-")[1]) + 1)
        return found

    def save(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Atomically add one chunk of freshly encoded rows."""
        if len(ids) == 0:
            return
        fs.make_private_dir(self.path.parent)
        fs.make_private_dir(self.path)
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.asarray(ids, np.int64), embeddings=np.asarray(embeddings, np.float32))
        fs.atomic_write_bytes(self.path / f"chunk-{self._next:06d}.npz", buffer.getvalue())
        self._next += 1


def clear_all(index_dir: Path) -> None:
    """Delete every resume checkpoint of an index (after a commit, or when records are removed)."""
    store.remove_tree(index_dir / "work")
