"""``PrivateIndex``: the facade over the index parts: open, inspect, add to, remove from, bind, re-point.

Opening validates the manifest (format version, dimension, encoder hash, DP-safe index type, file sizes,
ledger binding) and refuses anything else; each shard file's sha256 and every row (finite, unit norm) are
checked when the shard is loaded (:mod:`index.shard`). Writes hold an exclusive lock and go through the
commit protocol (:mod:`index.commit`); an index opened with ``mmap=True`` is read-only, so a memory-mapped
faiss index is never mutated. Parts (build, removal, commit) never import this facade.

There is no exact search here: a private index only answers through the DP mechanism
(``pipeline.mechanism``), which uses the shard primitives ``restrict``/``score``/``ids_at``/``rows``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from typing import Any

from index import commit as protocol
from index import fs, store
from index.build import BuildReport, run_build
from index.commit import BeforeCommit, View, check_encoder, open_view
from index.encoder import Encoder, load_encoder
from index.errors import IndexInputError
from index.removal import RemoveReport, drop_shard, remove_records
from index.rows import check_threads
from index.shard import Shard


class PrivateIndex:
    """A private, sharded, DP-safe index on disk. Build one with :func:`index.build_index`; open with :meth:`open`."""

    def __init__(self, view: View, *, encoder: Encoder | None = None, threads: int | None = None) -> None:
        self.path = view.path
        self.mmap = view.mmap
        self.threads = check_threads(threads)
        self._encoder = encoder
        self._use(view)

    def _use(self, view: View) -> None:
        """Adopt ``view`` and give every shard view this index's scoring threads."""
        for shard in view.shards.values():
            shard.threads = self.threads
        self._view = view

    @property
    def _top(self) -> dict[str, Any]:
        return self._view.top

    @property
    def _shards(self) -> dict[str, Shard]:
        return self._view.shards

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        mmap: bool = False,
        encoder: Encoder | None = None,
        threads: int | None = None,
    ) -> PrivateIndex:
        """Open and validate an index.

        Args:
            index_dir: the index directory.
            mmap: memory-map the faiss indexes and embeddings read-only (add/remove are then refused).
            encoder: if given, it must be the encoder the index was built with (same sha256 and dimension).
            threads: threads scoring one private query's kept rows in each shard (:meth:`Shard.score`; default 1).
                The scores, hence the top-k, are bit-identical for any value.

        Raises:
            IndexInputError: not an index, or ``encoder`` differs from the index's encoder.
            IndexCorruptError: manifest or shard files are missing, truncated, or inconsistent.
            UnsafeIndexError: a stored faiss index is not the DP-safe type the manifest records.
        """
        path = fs.expand_user(index_dir).resolve()
        view = open_view(path, mmap=mmap)
        if encoder is not None:
            check_encoder(view.top, encoder, path)
        return cls(view, encoder=encoder, threads=threads)

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

    @property
    def ledger_binding(self) -> dict[str, str] | None:
        """The index's one ledger, ``{"id", "location"}``, or None if unbound.

        ``location`` is a URL, an absolute path, or a path relative to the index directory (when the ledger lives
        inside it): resolve it with ``index.path / location``.
        """
        binding = self._top.get("ledger")
        return dict(binding) if binding is not None else None

    def bind_ledger(self, ledger_id: str, location: str | os.PathLike[str]) -> None:
        """Record ``ledger_id`` (at ``location``) as this index's ledger, atomically under the index lock.

        Raises:
            LedgerBindingError: the index is bound to another ledger id (exit 3).
            IndexInputError: the index was opened read-only (mmap), or the id is empty.
        """
        self._require_writable()
        top = protocol.bind_ledger(self.path, ledger_id, location)
        self._adopt(top)

    def info(self) -> dict[str, Any]:
        """Counts, dimension, index type, shards (records, skipped count, ``empty``), skipped inputs, encoder,
        ledger binding and last operation (the ``--json`` shape; human output should print only the counts)."""
        return protocol.describe(self._view)

    def verify(self) -> PrivateIndex:
        """Check every shard file against its manifest checksum without loading faiss (see :meth:`Shard.verify_files`).

        ``PrivateIndex.open(dir).verify().info()`` finds the damage ``open(dir, mmap=True)`` finds by checksum,
        without importing faiss or mapping the files (what ``dprdm index info`` needs).

        Raises:
            IndexCorruptError: a shard file is unreadable or fails its checksum.
        """
        for shard in self._shards.values():
            shard.verify_files()
        return self

    def records(self, shard: str | None = None) -> Iterator[tuple[str, int, str]]:
        """Every stored ``(shard, id, source)``, stored copies first then duplicate sources (the owner's listing).

        Private metadata: for the index owner (``dprdm index ls``), never for analysts.

        Raises:
            IndexInputError: no such shard.
        """
        for view in self.shards(None if shard is None else [shard]):
            rows, aliases = view.metadata()
            for row in rows + aliases:
                yield view.name, row.id, row.source

    def load_encoder(self, *, num_threads: int | None = None) -> Encoder:
        """Re-load the encoder this index was built with and check its hash.

        Raises:
            IndexInputError: the model is missing (moved: re-point it with :meth:`set_encoder`), or its weights
                changed since the index was built.
        """
        spec = self._top["encoder"]
        try:
            encoder = load_encoder(spec.get("model"), spec.get("pretrained"), num_threads=num_threads)
        except IndexInputError as err:
            reason = str(err).split(";")[0]
            raise IndexInputError(
                f"the encoder of index '{self.path}' ('{spec['model_id']}') cannot be loaded ({reason}); if its "
                "folder moved, re-point the index with 'dprdm index set-encoder' (its sha256 is checked)"
            ) from err
        check_encoder(self._top, encoder, self.path)
        return encoder

    def add(
        self,
        source: str | os.PathLike[str],
        *,
        shard: str = "default",
        batch_size: int = 64,
        image_column: str | None = None,
        num_threads: int | None = None,
        progress: bool = False,
        before_commit: BeforeCommit | None = None,
    ) -> BuildReport:
        """Append the images of ``source`` to ``shard`` (created if new) with the index's own encoder.

        Opens nothing again: the manifest is re-read once under the lock and the current shard views are reused.
        ``before_commit(shard, new_ids)`` runs right before the commit (see :func:`index.build_index`).
        """
        self._require_writable()
        report, view = run_build(
            source, self.path, shard=shard, batch_size=batch_size, image_column=image_column,
            num_threads=num_threads, progress=progress, append=True, before_commit=before_commit,
            known=self._view, encoder=self._encoder,
        )  # fmt: skip
        self._use(view)
        return report

    def remove(
        self,
        *,
        ids: Iterable[int] | None = None,
        sources: Iterable[str] | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> RemoveReport:
        """Delete records by content id and/or by source from vectors, metadata and id map.

        A source matches a record stored from that exact path or dataset row, or from anything under that
        folder / dataset file; a match on any copy of a duplicated image removes the image. Resume
        checkpoints are dropped too, so no embedding of a removed record stays on disk.
        ``before_commit(shard, removed_ids)`` runs once per affected shard right before the commit.

        Returns:
            A :class:`RemoveReport`; selectors that matched nothing are listed in it.

        Raises:
            IndexInputError: no selector, or no selector matched anything (the message names them).
        """
        self._require_writable()
        report, view = remove_records(
            self.path, ids=ids, sources=sources, before_commit=before_commit, known=self._view
        )
        self._use(view)
        return report

    def drop_shard(self, name: str, *, before_commit: BeforeCommit | None = None) -> int:
        """Delete shard ``name`` and its records; return how many records it held.

        ``before_commit(name, ids)`` receives every id of the shard right before the commit.

        Raises:
            IndexInputError: no such shard, or the index was opened read-only.
        """
        self._require_writable()
        ids, view = drop_shard(self.path, name, before_commit=before_commit, known=self._view)
        self._use(view)
        return int(len(ids))

    def set_encoder(self, model: str, pretrained: str | None = None) -> None:
        """Re-point the index at a moved encoder: load it, refuse other weights, rewrite the manifest atomically.

        Raises:
            IndexInputError: the model cannot be loaded, or its sha256/dimension differ from the index's encoder.
        """
        self._require_writable()
        encoder = load_encoder(model, pretrained)
        with store.writer_lock(self.path):
            top = protocol.read_top_manifest(self.path)
            check_encoder(top, encoder, self.path)
            top["encoder"] = dict(top["encoder"], model_id=encoder.model_id, **encoder.spec.to_dict())
            new_top = protocol.write_manifest(self.path, top, {"op": "set-encoder"})
        self._encoder = encoder
        self._adopt(new_top)

    def _require_writable(self) -> None:
        if self.mmap:
            raise IndexInputError(
                f"index '{self.path}' was opened with mmap=True (read-only); reopen with mmap=False to modify it"
            )

    def _adopt(self, top: dict[str, Any]) -> None:
        self._use(protocol.view_of(self.path, top, mmap=self.mmap, known=self._view))
