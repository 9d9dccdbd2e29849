"""``PrivateIndex``: open, inspect, search, add to and remove from an on-disk private index.

Opening validates the manifest (format version, dimension, encoder hash, DP-safe index type, file sizes)
and refuses anything else; each shard file's sha256 is checked when it is first loaded (:mod:`index.shard`). Writes (add, remove, build) happen under an exclusive lock and commit by
atomically replacing ``manifest.json`` (:mod:`index.store`); an index opened with ``mmap=True`` is
read-only, so a memory-mapped faiss index is never mutated.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from index import resume, store
from index.encoder import Encoder, load_encoder
from index.errors import IndexCorruptError, IndexInputError
from index.paths import expand_user
from index.safety import IndexKind
from index.shard import Shard, ShardContent, write_shard

if TYPE_CHECKING:
    from index.build import BuildReport


def read_top_manifest(index_dir: Path) -> dict[str, Any]:
    """Read and validate ``DIR/manifest.json``.

    Raises:
        IndexInputError: ``index_dir`` is not an index directory.
        IndexCorruptError: the manifest is unreadable, from a newer format, or inconsistent.
    """
    if not (index_dir / store.MANIFEST).is_file():
        raise IndexInputError(
            f"'{index_dir}' is not a dprdm index (no {store.MANIFEST}); build one with 'dprdm index build'"
        )
    top = store.read_json(index_dir / store.MANIFEST)
    version = top.get("format_version")
    if top.get("format") != "dprdm-index" or not isinstance(version, int):
        raise IndexCorruptError(
            f"'{index_dir / store.MANIFEST}' is not a dprdm index manifest; rebuild the index"
        )
    if version != store.FORMAT_VERSION:
        raise IndexCorruptError(
            f"index '{index_dir}' has format version {version}, this dprdm reads {store.FORMAT_VERSION}; "
            "use the matching dprdm version or rebuild the index"
        )
    try:
        IndexKind(top["index_type"])
        dim = int(top["dim"])
        if dim != int(top["encoder"]["dim"]) or not isinstance(top["encoder"]["sha256"], str) or dim < 1:
            raise ValueError("dimension")
        if not isinstance(top["shards"], dict):
            raise ValueError("shards")
    except (KeyError, TypeError, ValueError) as err:
        raise IndexCorruptError(
            f"'{index_dir / store.MANIFEST}' is inconsistent ({err}); rebuild the index"
        ) from err
    return top


def common_shard_fields(top: dict[str, Any]) -> dict[str, Any]:
    """Fields every shard manifest repeats from the index manifest (checked on open)."""
    fields = {k: top[k] for k in ("format_version", "dim", "encoder", "index_type", "faiss", "metric")}
    fields["quantizer"] = top["quantizer"]["provenance"]
    fields["nprobe"] = top["quantizer"].get("nprobe", 0)
    return fields


def load_template(index_dir: Path, top: dict[str, Any]) -> faiss.Index | None:
    """The trained public IVF template of an ivf-flat index (None for flat)."""
    if top["index_type"] != IndexKind.IVF_FLAT.value:
        return None
    return store.read_faiss(index_dir / "quantizer.faiss", mmap=False, flat=False)


def commit(
    index_dir: Path, top: dict[str, Any], updates: dict[str, ShardContent], operation: dict[str, Any]
) -> dict[str, Any]:
    """Write new generations for ``updates``, atomically switch the manifest to them, then drop old files.

    Old generations, stray temp dirs and every resume checkpoint are deleted only after the new manifest is
    durable, so a crash at any point leaves a complete index (old or new).
    """
    kind = IndexKind(top["index_type"])
    template = load_template(index_dir, top)
    new_top = copy.deepcopy(top)
    for name, content in updates.items():
        relative = write_shard(
            index_dir, content, kind=kind, template=template, common=common_shard_fields(top)
        )
        new_top["shards"][name] = {"dir": relative, "records": int(len(content.ids))}
    new_top["updated"] = store.utc_now()
    new_top["last_operation"] = dict(operation, at=new_top["updated"])
    store.atomic_write_json(index_dir / store.MANIFEST, new_top)
    resume.clear_all(index_dir)
    drop_unreferenced(index_dir, new_top)
    return new_top


def drop_unreferenced(index_dir: Path, top: dict[str, Any]) -> None:
    """Delete shard generations the manifest does not name (old ones, or leftovers of a crash)."""
    keep = {Path(entry["dir"]).name for entry in top["shards"].values()}
    shards = index_dir / "shards"
    if shards.is_dir():
        for child in shards.iterdir():
            if child.name not in keep:
                store.remove_tree(child)


class PrivateIndex:
    """A private, sharded, DP-safe index on disk. Build one with :func:`index.build_index`; open with :meth:`open`."""

    def __init__(self, path: Path, top: dict[str, Any], shards: dict[str, Shard], *, mmap: bool) -> None:
        self.path = path
        self._top = top
        self._shards = shards
        self.mmap = mmap

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike[str], *, mmap: bool = False, encoder: Encoder | None = None
    ) -> PrivateIndex:
        """Open and validate an index.

        Args:
            index_dir: the index directory.
            mmap: memory-map the faiss indexes and embeddings read-only (add/remove are then refused).
            encoder: if given, it must be the encoder the index was built with (same sha256 and dimension).

        Raises:
            IndexInputError: not an index, or ``encoder`` differs from the index's encoder.
            IndexCorruptError: manifest or shard files are missing, truncated, or inconsistent.
            UnsafeIndexError: a stored faiss index is not the DP-safe type the manifest records.
        """
        path = expand_user(index_dir).resolve()
        top = read_top_manifest(path)
        if encoder is not None:
            check_encoder(top, encoder, path)
        shards = {
            name: Shard(path, name, entry, top, mmap=mmap) for name, entry in sorted(top["shards"].items())
        }
        return cls(path, top, shards, mmap=mmap)

    def __repr__(self) -> str:
        return f"PrivateIndex({str(self.path)!r}, records={self.num_records}, shards={self.shard_names})"

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._top["dim"])

    @property
    def index_type(self) -> str:
        """``flat`` or ``ivf-flat``."""
        return str(self._top["index_type"])

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the index manifest."""
        return copy.deepcopy(self._top)

    @property
    def shard_names(self) -> list[str]:
        """Names of the shards, sorted."""
        return list(self._shards)

    @property
    def num_records(self) -> int:
        """Records over all shards."""
        return sum(s.num_records for s in self._shards.values())

    def shard(self, name: str) -> Shard:
        """One shard by name.

        Raises:
            IndexInputError: no such shard.
        """
        if name not in self._shards:
            raise IndexInputError(
                f"no shard '{name}' in index '{self.path}' (shards: {self.shard_names}); pass one of them"
            )
        return self._shards[name]

    def shards(self, names: Iterable[str] | None = None) -> list[Shard]:
        """Several shards (all when ``names`` is None)."""
        return [self.shard(n) for n in (self.shard_names if names is None else names)]

    def info(self) -> dict[str, Any]:
        """Counts, dimension, index type, shards, skipped inputs, encoder and last operation (the ``--json`` shape)."""
        skipped = [dict(s, shard=n) for n, sh in self._shards.items() for s in sh.manifest.get("skipped", [])]
        return {
            "records": self.num_records,
            "dim": self.dim,
            "index_type": self.index_type,
            "shards": {
                n: {"records": sh.num_records, "skipped": len(sh.manifest.get("skipped", []))}
                for n, sh in self._shards.items()
            },
            "skipped": skipped,
            "encoder": {
                "model_id": self._top["encoder"]["model_id"],
                "sha256": self._top["encoder"]["sha256"],
            },
            "quantizer": self._top["quantizer"]["provenance"],
            "format_version": self._top["format_version"],
            "last_operation": self._top.get("last_operation", {}),
        }

    def load_encoder(self, *, num_threads: int | None = None) -> Encoder:
        """Re-load the encoder this index was built with and check its hash.

        Raises:
            IndexInputError: the model is missing, or its weights changed since the index was built.
        """
        spec = self._top["encoder"]
        encoder = load_encoder(spec.get("model"), spec.get("pretrained"), num_threads=num_threads)
        check_encoder(self._top, encoder, self.path)
        return encoder

    def search(
        self, queries: np.ndarray, k: int, *, shards: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the chosen shards: (scores, ids), best first, id -1 where fewer than k exist.

        Scores and ids of private records: the caller must not release them (the DP stage only releases a
        noised aggregate).
        """
        if k < 1:
            raise IndexInputError(f"k must be >= 1, found {k}")
        parts = [s.search(queries, k) for s in self.shards(shards)]
        if not parts:
            raise IndexInputError(f"index '{self.path}' has no shards; add one with 'dprdm index add'")
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def add(
        self,
        source: str | os.PathLike[str],
        *,
        shard: str,
        batch_size: int = 64,
        image_column: str | None = None,
        num_threads: int | None = None,
        progress: bool = False,
    ) -> BuildReport:
        """Append the images of ``source`` to ``shard`` (created if new) with the index's own encoder."""
        from index.build import build_index

        self._require_writable()
        report = build_index(
            source, self.path, shard=shard, batch_size=batch_size, image_column=image_column,
            num_threads=num_threads, progress=progress, append=True,
        )  # fmt: skip
        self._reload()
        return report

    def remove(self, *, ids: Iterable[int] | None = None, sources: Iterable[str] | None = None) -> int:
        """Delete records by content id and/or by source from vectors, metadata and id map; return how many.

        A source matches a record stored from that exact path or dataset row, or from anything under that
        folder / dataset file; a match on any copy of a duplicated image removes the image. Resume
        checkpoints are dropped too, so no embedding of a removed record stays on disk.
        """
        from index.removal import remove_records

        self._require_writable()
        removed = remove_records(self.path, ids=ids, sources=sources)
        self._reload()
        return removed

    def _require_writable(self) -> None:
        if self.mmap:
            raise IndexInputError(
                f"index '{self.path}' was opened with mmap=True (read-only); reopen with mmap=False to modify it"
            )

    def _reload(self) -> None:
        fresh = PrivateIndex.open(self.path, mmap=self.mmap)
        self._top, self._shards = fresh._top, fresh._shards


def check_encoder(top: dict[str, Any], encoder: Encoder, path: Path) -> None:
    """Refuse an encoder that is not the one recorded in the manifest.

    Raises:
        IndexInputError: different weights hash or dimension.
    """
    want = top["encoder"]
    if encoder.sha256 != want["sha256"] or encoder.dim != int(top["dim"]):
        raise IndexInputError(
            f"encoder '{encoder.model_id}' (sha256 {encoder.sha256[:12]}, dim {encoder.dim}) is not the encoder of "
            f"index '{path}' ('{want['model_id']}', sha256 {want['sha256'][:12]}, dim {top['dim']}); "
            "use the index's encoder (omit --model) or build a new index"
        )
