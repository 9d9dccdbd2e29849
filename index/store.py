"""The *writer* stage: the on-disk layout of an index and its crash-safe, private writes.

Layout of an index directory (created 0700; every file 0600, because embeddings of private images are
private data)::

    DIR/manifest.json              the commit point: format version, encoder, index type, shard -> generation
    DIR/quantizer.faiss            only for ivf-flat: the empty IVF index trained on PUBLIC embeddings
    DIR/shards/<name>.<gen>/       one immutable generation per shard:
        index.faiss                IndexIDMap2(IndexFlatIP) (or IndexIVFFlat) over the shard's rows
        embeddings.npy             (n, d) unit rows, row i belongs to ids[i]: float32, or float16/int8 when the
                                   shard manifest's "storage" says so (index.storage)
        ids.npy                    (n,) int64 content ids, the row order of the flat storage
        metadata.sqlite            records(id, source, position) + aliases(id, source) for exact duplicates
        manifest.json              per-shard manifest: encoder, dim, counts, index type, storage, times, and per data
                                   file its size and sha256 (checked when the file is loaded)
    DIR/work/<encoder>/chunk-*.npz resume checkpoints of an unfinished build (deleted when a build commits)
    DIR/.lock                      flock held by writers

A write never edits a generation in place: it writes ``shards/<name>.<gen>.tmp``, fsyncs every file,
renames it, then atomically replaces ``manifest.json`` with :func:`index.fs.atomic_write_json`.
A crash at any point leaves the previous manifest pointing at complete files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.errors import IndexCorruptError, IndexInputError
from index.fs import FILE_MODE, make_private_dir

if TYPE_CHECKING:
    import faiss

FORMAT_VERSION = 2  # 2: shard manifests record a sha256 per data file
MANIFEST = "manifest.json"


def utc_now() -> str:
    """Timestamp for manifests (UTC, seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[Any]:
    """Open a new 0600 file for binary writing; fsync it before closing (data files of a new generation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path) -> dict[str, Any]:
    """Read a manifest; a missing or malformed one is an :class:`IndexCorruptError`."""
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise IndexCorruptError(f"manifest '{path}' is missing; rebuild with 'dprdm index build'") from err
    except (OSError, ValueError) as err:
        raise IndexCorruptError(
            f"manifest '{path}' is unreadable ({type(err).__name__}); rebuild the index"
        ) from err
    if not isinstance(payload, dict):
        raise IndexCorruptError(f"manifest '{path}' is not a JSON object; rebuild the index")
    return payload


@contextlib.contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index's exclusive writer lock; a second writer is refused instead of waiting."""
    make_private_dir(index_dir)
    fd = os.open(index_dir / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise IndexInputError(
                f"index '{index_dir}' is being modified by another process; wait for it to finish and retry"
            ) from err
        yield
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, streamed in chunks (a shard data file may be larger than memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_faiss(index: faiss.Index, path: Path) -> None:
    """Write a faiss index as a 0600 file and fsync it."""
    import faiss

    faiss.write_index(index, str(path))
    os.chmod(path, FILE_MODE)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def read_faiss(path: Path, *, mmap: bool, flat: bool) -> faiss.Index:
    """Read a faiss index; ``mmap`` maps it read-only (``IO_FLAG_MMAP_IFC`` for flat, ``IO_FLAG_MMAP`` for IVF)."""
    import faiss

    flags = (faiss.IO_FLAG_MMAP_IFC if flat else faiss.IO_FLAG_MMAP) if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as err:
        raise IndexCorruptError(f"index file '{path}' is unreadable or truncated; rebuild the shard") from err


@dataclass(frozen=True, slots=True)
class MetadataRow:
    """One stored record: content id and the source it came from (first copy; later copies are aliases)."""

    id: int
    source: str


def write_metadata(path: Path, rows: Sequence[MetadataRow], aliases: Sequence[MetadataRow]) -> None:
    """Write a fresh 0600 SQLite metadata file (positions follow ``rows`` order) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TABLE records (id INTEGER PRIMARY KEY, position INTEGER NOT NULL, source TEXT NOT NULL)"
        )
        conn.execute("CREATE TABLE aliases (id INTEGER NOT NULL, source TEXT NOT NULL)")
        conn.execute("CREATE INDEX records_source ON records(source)")
        conn.execute("CREATE INDEX aliases_source ON aliases(source)")
        conn.executemany(
            "INSERT INTO records (id, position, source) VALUES (?, ?, ?)",
            ((row.id, pos, row.source) for pos, row in enumerate(rows)),
        )
        conn.executemany(
            "INSERT INTO aliases (id, source) VALUES (?, ?)", ((a.id, a.source) for a in aliases)
        )
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.chmod(path, FILE_MODE)


def read_metadata(path: Path) -> tuple[list[MetadataRow], list[MetadataRow]]:
    """Read rows (in position order) and aliases from a metadata file, read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [
                MetadataRow(i, s) for i, s in conn.execute("SELECT id, source FROM records ORDER BY position")
            ]
            aliases = [
                MetadataRow(i, s) for i, s in conn.execute("SELECT id, source FROM aliases ORDER BY rowid")
            ]
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise IndexCorruptError(f"metadata '{path}' is unreadable ({err}); rebuild the shard") from err
    return rows, aliases


def write_array(path: Path, array: np.ndarray) -> None:
    """Write a ``.npy`` file with mode 0600 and fsync it."""
    with private_file(path) as handle:
        np.save(handle, array, allow_pickle=False)


def remove_tree(path: Path) -> None:
    """Delete a directory tree if it exists (old generations, stale temp dirs, work checkpoints)."""
    shutil.rmtree(path, ignore_errors=True)
