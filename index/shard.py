"""One shard (compartment) of a private index: an immutable on-disk generation and its read-side view.

Positional invariant (the DP retrieval stage relies on it): ``shard.ids[i]`` is the content id of
``shard.embeddings[i]``. For the default flat index this is also the row order of the faiss storage. For
ivf-flat, faiss keeps its own list order; ``ids``/``embeddings`` keep this order.

Integrity: the shard manifest records each data file's size and sha256. Opening checks the sizes (cheap);
each file's sha256 is checked the first time the view loads it, so damage of the right size (a flipped
block in the middle of ``embeddings.npy``) is refused instead of answering queries from damaged data.
Checking reads the whole file once; with ``mmap=True`` that read happens on open (everything is mapped
then), which costs the page-in that mapping would otherwise defer to the first search, but no heap: the
file is streamed through a small buffer and its pages stay in the shared, reclaimable page cache.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import store
from index.errors import IndexCorruptError, IndexInputError, StaleShardError
from index.safety import IndexKind, check_faiss_index

logger = logging.getLogger(__name__)

FILES = ("index.faiss", "embeddings.npy", "ids.npy", "metadata.sqlite")
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _distance_path(num_queries: int) -> Iterator[None]:
    """Pick faiss's flat-search kernel for one call, then restore the global setting.

    faiss-cpu 1.15 ships ``distance_compute_blas_threshold = 128000`` and never takes the BLAS path for
    small batches: 64 queries at d = 512 ran 6-9x slower than one matrix product, while a single query is
    fastest on the SIMD scan (benchmarks/results/index.md). So: BLAS for batches, SIMD for one query,
    whatever the threshold is compared against. Results are the same exact top-k either way.
    """
    with _BLAS_LOCK:
        previous = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1 if num_queries > 1 else 2**30
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = previous


@dataclass(frozen=True, kw_only=True)
class ShardContent:
    """Everything a new shard generation holds, in row order (input of :func:`write_shard`)."""

    name: str
    ids: np.ndarray
    embeddings: np.ndarray
    rows: list[store.MetadataRow]
    aliases: list[store.MetadataRow]
    skipped: list[dict[str, str]]
    created: str


def make_faiss_index(
    kind: IndexKind, ids: np.ndarray, embeddings: np.ndarray, template: faiss.Index | None
) -> faiss.Index:
    """A fresh index over ``embeddings`` with faiss ids ``ids``: IDMap2(FlatIP), or a clone of the public IVF."""
    if kind is IndexKind.FLAT:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(embeddings.shape[1]))
    else:
        if template is None:
            raise IndexCorruptError("ivf-flat index without its public quantizer.faiss; rebuild the index")
        index = faiss.clone_index(template)
    if len(ids):
        index.add_with_ids(
            np.ascontiguousarray(embeddings, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        )
    return index


def write_shard(
    index_dir: Path,
    content: ShardContent,
    *,
    kind: IndexKind,
    template: faiss.Index | None,
    common: dict[str, Any],
) -> str:
    """Write a complete, fsynced shard generation and return its directory relative to ``index_dir``.

    The generation becomes visible only when the caller commits a manifest that names it.
    """
    shards = store.make_private_dir(index_dir / "shards")
    relative = f"shards/{content.name}.{secrets.token_hex(6)}"
    tmp = store.make_private_dir(index_dir / f"{relative}.tmp")
    store.write_faiss(make_faiss_index(kind, content.ids, content.embeddings, template), tmp / "index.faiss")
    store.write_array(tmp / "embeddings.npy", np.ascontiguousarray(content.embeddings, dtype=np.float32))
    store.write_array(tmp / "ids.npy", np.ascontiguousarray(content.ids, dtype=np.int64))
    store.write_metadata(tmp / "metadata.sqlite", content.rows, content.aliases)
    now = store.utc_now()
    manifest = dict(common)
    manifest.update(
        shard=content.name,
        records=int(len(content.ids)),
        files={
            name: {"size": (tmp / name).stat().st_size, "sha256": store.file_sha256(tmp / name)}
            for name in FILES
        },
        skipped=content.skipped,
        created=content.created,
        updated=now,
    )
    store.atomic_write_json(tmp / store.MANIFEST, manifest)
    store.fsync_dir(tmp)
    (index_dir / f"{relative}.tmp").rename(index_dir / relative)
    store.fsync_dir(shards)
    return relative


class Shard:
    """Read-side view of one shard generation; never mutates files (mapped indexes abort if mutated).

    Attributes:
        name: shard name.
        num_records: number of stored records.
        kind: DP-safe index kind.
    """

    def __init__(
        self, index_dir: Path, name: str, entry: dict[str, Any], top: dict[str, Any], *, mmap: bool
    ) -> None:
        self.name = name
        self.path = index_dir / str(entry.get("dir", ""))
        self.kind = IndexKind(top["index_type"])
        self.mmap = mmap
        self._dim = int(top["dim"])
        self.manifest = store.read_json(self.path / store.MANIFEST)
        self._check(entry, top)
        self.num_records = int(self.manifest["records"])
        self._ids: np.ndarray | None = None
        self._embeddings: np.ndarray | None = None
        self._index: faiss.Index | None = None
        self._searcher: faiss.Index | None = None
        self._sorter: np.ndarray | None = None
        self._verified: set[str] = set()
        if mmap:  # map everything now: a mapping stays valid if a writer later drops this generation
            self.load()

    def __repr__(self) -> str:
        return f"Shard(name={self.name!r}, num_records={self.num_records}, kind={self.kind.value!r})"

    def _check(self, entry: dict[str, Any], top: dict[str, Any]) -> None:
        m = self.manifest
        where = self.path / store.MANIFEST
        if m.get("format_version") != store.FORMAT_VERSION or m.get("shard") != self.name:
            raise IndexCorruptError(
                f"shard manifest '{where}' does not match the index manifest; rebuild the shard"
            )
        if m.get("encoder", {}).get("sha256") != top["encoder"]["sha256"] or m.get("dim") != self._dim:
            raise IndexCorruptError(
                f"shard '{self.name}' was written with another encoder or dimension than the index; rebuild the shard"
            )
        if m.get("records") != entry.get("records") or m.get("index_type") != top["index_type"]:
            raise IndexCorruptError(
                f"shard '{self.name}' record count or index type disagrees with '{store.MANIFEST}'"
            )
        files = m.get("files")
        if not isinstance(files, dict) or any(
            not isinstance(files.get(name), dict)
            or not isinstance(files[name].get("size"), int)
            or not isinstance(files[name].get("sha256"), str)
            for name in FILES
        ):
            raise IndexCorruptError(
                f"shard manifest '{where}' lacks the size and sha256 of its files; rebuild the shard"
            )
        for name in FILES:
            path = self.path / name
            if not path.is_file() or path.stat().st_size != files[name]["size"]:
                raise IndexCorruptError(
                    f"shard file '{path}' is missing or has the wrong size; rebuild the shard"
                )

    def _verified_path(self, name: str) -> Path:
        """Path of data file ``name`` once its content matches the manifest's sha256 (checked once per view)."""
        path = self.path / name
        if name in self._verified:
            return path
        if not self.path.is_dir():
            raise self._stale(FileNotFoundError(name))
        try:
            digest = store.file_sha256(path)
        except OSError as err:
            if not self.path.is_dir():
                raise self._stale(err) from err
            raise IndexCorruptError(
                f"'{path}' is unreadable ({type(err).__name__}); rebuild the shard"
            ) from err
        if digest != self.manifest["files"][name]["sha256"]:
            raise IndexCorruptError(
                f"shard file '{path}': checksum mismatch (sha256 differs from the shard manifest); restore the index "
                "directory from a backup or rebuild the shard with 'dprdm index build'"
            )
        self._verified.add(name)
        return path

    def load(self) -> Shard:
        """Load and check every file a query reads (faiss index, ids, embeddings) now; cached on this view.

        A private query calls this before its ledger charge, so a damaged shard is refused with nothing charged.
        Loading releases nothing.

        Raises:
            IndexCorruptError: a file is unreadable, fails its checksum, or disagrees with the manifest.
            StaleShardError: the generation was replaced after this view was opened.
            UnsafeIndexError: the stored faiss index is not the DP-safe type the manifest records.
        """
        _ = self.faiss_index, self._load_ids(), self.embeddings
        return self

    def metadata(self) -> tuple[list[store.MetadataRow], list[store.MetadataRow]]:
        """Rows (in position order) and aliases from the checked ``metadata.sqlite``, read-only."""
        return store.read_metadata(self._verified_path("metadata.sqlite"))

    @property
    def ids(self) -> np.ndarray:
        """Content ids, int64, a copy in row order (``ids[i]`` labels ``embeddings[i]``)."""
        return self._load_ids().copy()

    def _load_ids(self) -> np.ndarray:
        if self._ids is None:
            ids = self._load_npy("ids.npy")
            if ids.dtype != np.int64 or ids.shape != (self.num_records,):
                raise IndexCorruptError(f"'{self.path / 'ids.npy'}' has shape {ids.shape}; rebuild the shard")
            self._ids = ids
        return self._ids

    @property
    def embeddings(self) -> np.ndarray:
        """All unit rows, float32 ``(num_records, dim)``, read-only (memory-mapped when opened with mmap)."""
        if self._embeddings is None:
            emb = self._load_npy("embeddings.npy")
            if emb.dtype != np.float32 or emb.shape != (self.num_records, self._dim):
                raise IndexCorruptError(
                    f"'{self.path / 'embeddings.npy'}' has shape {emb.shape}; rebuild the shard"
                )
            self._embeddings = emb
        return self._embeddings

    def _stale(self, err: Exception) -> StaleShardError:
        return StaleShardError(
            f"shard '{self.name}' was rewritten by another add/remove/build after this index was opened; reopen it"
        )

    def _load_npy(self, name: str) -> np.ndarray:
        if not self.path.is_dir():
            raise self._stale(FileNotFoundError(name))
        try:
            array = np.load(
                self._verified_path(name), mmap_mode="r" if self.mmap else None, allow_pickle=False
            )
        except (OSError, ValueError) as err:
            raise IndexCorruptError(
                f"'{self.path / name}' is unreadable ({type(err).__name__}); rebuild the shard"
            ) from err
        array.setflags(write=False)
        return array

    @property
    def faiss_index(self) -> faiss.Index:
        """The CPU faiss index (``IndexIDMap2(IndexFlatIP)`` by default); read-only when opened with mmap."""
        if self._index is None:
            if not self.path.is_dir():
                raise self._stale(FileNotFoundError("index.faiss"))
            index = store.read_faiss(
                self._verified_path("index.faiss"), mmap=self.mmap, flat=self.kind is IndexKind.FLAT
            )
            check_faiss_index(index, self.kind, where=str(self.path / "index.faiss"))
            if index.ntotal != self.num_records or index.d != self._dim:
                raise IndexCorruptError(
                    f"'{self.path / 'index.faiss'}' holds {index.ntotal} rows; rebuild the shard"
                )
            if self.kind is IndexKind.IVF_FLAT:
                faiss.extract_index_ivf(index).nprobe = int(self.manifest.get("nprobe", 1))
            self._index = index
        return self._index

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Rows for ``ids`` in that order, ``(len(ids), dim)`` float32 (a copy).

        Raises:
            IndexInputError: some ids are not in this shard (the ids are not echoed).
        """
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        stored = self._load_ids()
        if self._sorter is None:
            self._sorter = np.argsort(stored, kind="stable")
        pos = np.searchsorted(stored, wanted, sorter=self._sorter)
        pos = np.minimum(pos, max(len(stored) - 1, 0))
        rows = self._sorter[pos] if len(stored) else pos
        if len(stored) == 0 or not np.array_equal(stored[rows], wanted):
            missing = int(np.sum(stored[rows] != wanted)) if len(stored) else len(wanted)
            raise IndexInputError(f"{missing} of {len(wanted)} requested ids are not in shard '{self.name}'")
        return np.array(self.embeddings[rows], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-``k`` (scores, ids), best first; missing slots are id -1, score -inf.

        Runs on all GPUs when ``faiss.get_num_gpus() > 0`` (same results as the CPU index), else on CPU.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self._dim:
            raise IndexInputError(f"queries have dimension {q.shape[1]}, shard '{self.name}' has {self._dim}")
        if self.num_records == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        with _distance_path(len(q)):
            scores, ids = self._search_index().search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def _search_index(self) -> faiss.Index:
        if self._searcher is None:
            self._searcher = self.faiss_index
            if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
                try:
                    self._searcher = faiss.index_cpu_to_all_gpus(self.faiss_index)
                except RuntimeError as err:  # an index type without a GPU version: stay on CPU
                    logger.warning("faiss GPU clone failed (%s); searching on CPU", type(err).__name__)
        return self._searcher
