"""One shard (compartment) of a private index: an immutable on-disk generation and its read-side view.

Positional invariant (the DP retrieval stage relies on it): ``shard.ids[i]`` is the content id of
``shard.embeddings[i]``. The mechanism reaches the rows only through :meth:`Shard.restrict`,
:meth:`Shard.score`, :meth:`Shard.ids_at` and :meth:`Shard.rows` (:mod:`index.rows`), never through faiss.

Records rule (issue 9): every stored row is finite with ``|norm - 1| <= 1e-3`` (float32 storage) or, for a shard
stored as float16/int8 (``"storage"`` in its manifest, fixed at creation, :mod:`index.storage`), with the
decoded row within that format's derived tolerance; checked when a generation is written and when
``embeddings.npy`` is loaded (before any charge), else :class:`IndexCorruptError`.

Integrity: the shard manifest records each data file's size and sha256. Opening checks the sizes (cheap);
each file's sha256 is checked the first time the view loads it, so damage of the right size (a flipped
block in the middle of ``embeddings.npy``) is refused instead of answering queries from damaged data.
Checking reads the whole file once; with ``mmap=True`` that read happens on open (everything is mapped
then), which costs the page-in that mapping would otherwise defer to the first search, but no heap: the
file is streamed through a small buffer and its pages stay in the shared, reclaimable page cache.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index import fs, store
from index import storage as formats
from index.errors import IndexCorruptError, IndexInputError, StaleShardError
from index.rows import RowSet, bad_rows, check_threads
from index.safety import IndexKind, check_faiss_index

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

FILES = ("index.faiss", "embeddings.npy", "ids.npy", "metadata.sqlite")


@dataclass(frozen=True, kw_only=True)
class ShardContent:
    """Everything a new shard generation holds, in row order (input of :func:`write_shard`).

    ``embeddings`` are float unit rows; ``storage`` is the format they are written in (:mod:`index.storage`).
    """

    name: str
    ids: np.ndarray
    embeddings: np.ndarray
    rows: list[store.MetadataRow]
    aliases: list[store.MetadataRow]
    skipped: list[dict[str, str]]
    created: str
    storage: str = formats.DEFAULT


def make_faiss_index(
    kind: IndexKind, ids: np.ndarray, embeddings: np.ndarray, template: faiss.Index | None
) -> faiss.Index:
    """A fresh index over ``embeddings`` with faiss ids ``ids``: IDMap2(FlatIP), or a clone of the public IVF."""
    import faiss

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

    Raises:
        IndexCorruptError: a row is not finite or not unit norm within the storage's tolerance, before or after
            encoding (nothing is written).
        IndexInputError: an unknown storage, or a compressed storage on an ivf-flat index.
    """
    storage = check_shard_storage(content.storage, kind)
    stored = None
    if not bad_rows(content.embeddings, storage):
        stored = formats.encode(content.embeddings, storage)
    if stored is None or (storage != formats.DEFAULT and bad_rows(stored, storage)):
        raise IndexCorruptError(
            f"refusing to write shard '{content.name}': embedding rows are not finite unit vectors "
            f"(storage {storage}); check the encoder and rebuild"
        )
    shards = fs.make_private_dir(index_dir / "shards")
    relative = f"shards/{content.name}.{secrets.token_hex(6)}"
    tmp = fs.make_private_dir(index_dir / f"{relative}.tmp")
    store.write_faiss(make_faiss_index(kind, content.ids, content.embeddings, template), tmp / "index.faiss")
    store.write_array(tmp / "embeddings.npy", stored)
    store.write_array(tmp / "ids.npy", np.ascontiguousarray(content.ids, dtype=np.int64))
    store.write_metadata(tmp / "metadata.sqlite", content.rows, content.aliases)
    now = store.utc_now()
    manifest = dict(common)
    manifest.update(
        shard=content.name,
        records=int(len(content.ids)),
        storage=storage,
        files={
            name: {"size": (tmp / name).stat().st_size, "sha256": store.file_sha256(tmp / name)}
            for name in FILES
        },
        skipped=content.skipped,
        created=content.created,
        updated=now,
    )
    fs.atomic_write_json(tmp / store.MANIFEST, manifest)
    fs.fsync_dir(tmp)
    (index_dir / f"{relative}.tmp").rename(index_dir / relative)
    fs.fsync_dir(shards)
    return relative


def check_shard_storage(storage: str, kind: IndexKind) -> str:
    """``storage`` if it names a format usable with ``kind``, else a one-line :class:`IndexInputError`.

    ivf-flat keeps float32 rows: its faiss lists hold them anyway, so compressing the scored copy saves nothing.
    """
    formats.check_storage(storage)
    if kind is IndexKind.IVF_FLAT and storage != formats.DEFAULT:
        raise IndexInputError(
            f"--storage {storage} is not supported with --index-type ivf-flat (its lists hold float32 rows); "
            "drop --storage or use the flat index"
        )
    return storage


class Shard:
    """Read-side view of one shard generation; never mutates files (mapped indexes abort if mutated).

    Attributes:
        name: shard name.
        num_records: number of stored records.
        kind: DP-safe index kind.
        storage: ``float32``, ``float16`` or ``int8`` (:mod:`index.storage`), fixed when the shard was created.
        threads: threads scoring one query's rows in :meth:`score` (default 1; scores do not depend on it).
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
        self.storage = str(self.manifest.get("storage", formats.DEFAULT))
        self._threads = 1
        self._ids: np.ndarray | None = None
        self._embeddings: np.ndarray | None = None
        self._index: faiss.Index | None = None
        self._rowset: RowSet | None = None
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
        storage = m.get("storage", formats.DEFAULT)
        if storage not in formats.STORAGES or (storage != formats.DEFAULT and self.kind is not IndexKind.FLAT):
            raise IndexCorruptError(
                f"shard manifest '{where}' names an unknown storage {storage!r} for index type '{self.kind.value}'; "
                "rebuild the shard"
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
        self._rows()
        return self

    def verify_files(self) -> Shard:
        """Check every file of this shard against the sha256 in its manifest, parsing none (no faiss import).

        For read-only listings (``dprdm index info``): damage is found as by :meth:`load`, whose checksums are then
        not computed again on this view; a query still calls :meth:`load`, which also parses and type-checks the
        faiss index, before any charge.

        Raises:
            IndexCorruptError: a file is unreadable or fails its checksum.
            StaleShardError: the generation was replaced after this view was opened.
        """
        for name in FILES:
            self._verified_path(name)
        return self

    def _rows(self) -> RowSet:
        import faiss

        if self._rowset is None:
            index, ids, stored = self.faiss_index, self._load_ids(), self._stored()
            quantizer = faiss.extract_index_ivf(index).quantizer if self.kind is IndexKind.IVF_FLAT else None
            self._rowset = RowSet(
                stored, ids, quantizer=quantizer, nprobe=int(self.manifest.get("nprobe", 1)), threads=self._threads
            )
        return self._rowset

    @property
    def threads(self) -> int:
        """Threads scoring one query's rows (:meth:`score`); the scores are bit-identical for any value."""
        return self._threads

    @threads.setter
    def threads(self, threads: int | None) -> None:
        self._threads = check_threads(threads)
        if self._rowset is not None:
            self._rowset.threads = self._threads

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact inner products (float32) of the unit ``query`` ``(d,)`` with the (decoded) rows at ``positions``.

        Float16/int8 shards: float32 query · decoded row (:mod:`index.storage`). Private values: used inside the
        mechanism only, never released.
        """
        return self._rows().score(query, positions)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """A float32 ``(m, d)`` copy of the (decoded) rows at ``positions``."""
        return self._rows().rows(positions)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Content ids (int64) of the rows at ``positions``: ``ids[i]`` labels row ``i``."""
        return self._rows().ids_at(positions)

    def restrict(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The positions a search for ``query`` may see: all (flat), or those in the probed public IVF lists."""
        return self._rows().restrict(query, positions)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

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
        """All unit rows, float32 ``(num_records, dim)``, read-only.

        float32 storage: the stored array (memory-mapped when opened with mmap); float16/int8: a decoded copy.
        """
        stored = self._stored()
        if stored.dtype == np.float32:
            return stored
        rows = formats.decode(stored)
        rows.setflags(write=False)
        return rows

    def _stored(self) -> np.ndarray:
        """The rows as stored (dtype of the shard's storage), loaded and checked once."""
        if self._embeddings is None:
            emb = self._load_npy("embeddings.npy")
            if emb.dtype != formats.dtype_of(self.storage) or emb.shape != (self.num_records, self._dim):
                raise IndexCorruptError(
                    f"'{self.path / 'embeddings.npy'}' has shape {emb.shape} and dtype {emb.dtype}, not "
                    f"{self.storage}; rebuild the shard"
                )
            if bad_rows(emb, self.storage):
                raise IndexCorruptError(
                    f"'{self.path / 'embeddings.npy'}' holds rows that are not finite unit vectors; rebuild the shard "
                    "with 'dprdm index build'"
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
        import faiss

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
