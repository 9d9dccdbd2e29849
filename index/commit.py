"""The commit protocol of an index: read and validate the manifest, write generations, switch, clean up.

Every writer (build, add, remove, drop-shard, bind-ledger, set-encoder) holds the index's writer lock, reads
the manifest with :func:`read_top_manifest`, and ends in :func:`commit` (or :func:`write_manifest`), which
makes the new state visible with one atomic ``manifest.json`` replacement (:func:`index.fs.atomic_write_json`).
Old generations, stray temp dirs and resume checkpoints are deleted only after the new manifest is durable, so
a crash at any point leaves a complete index (old or new).

Commit hooks: a caller may pass ``before_commit(shard, ids)``; :func:`commit` calls it for each listed shard
after the new generations are written and right before the manifest switch. If a hook raises, the new
generations are deleted and the manifest is not touched: the index is exactly as before.

This module never imports the facade (:mod:`index.private_index`); the facade imports it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index import fs, resume, store
from index.encoder import Encoder
from index.errors import IndexCorruptError, IndexInputError, LedgerBindingError
from index.safety import IndexKind
from index.shard import Shard, ShardContent, write_shard

if TYPE_CHECKING:
    import faiss

BeforeCommit = Callable[[str, np.ndarray], None]


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
        ledger = top.get("ledger")
        if ledger is not None and not (
            isinstance(ledger, dict) and isinstance(ledger.get("id"), str) and isinstance(ledger.get("location"), str)
        ):
            raise ValueError("ledger binding")
    except (KeyError, TypeError, ValueError) as err:
        raise IndexCorruptError(
            f"'{index_dir / store.MANIFEST}' is inconsistent ({err}); rebuild the index"
        ) from err
    return top


@dataclass(frozen=True, slots=True)
class View:
    """A validated manifest and a read view of every shard it names."""

    path: Path
    top: dict[str, Any]
    shards: dict[str, Shard]
    mmap: bool


def open_view(path: Path, *, mmap: bool = False, known: View | None = None) -> View:
    """Read the manifest once and open a view of each shard, reusing the views of ``known`` that are current.

    A shard view of ``known`` is reused when the manifest still names the same generation (so a writer that
    already holds a view does not open the index again).
    """
    top = read_top_manifest(path)
    return view_of(path, top, mmap=mmap, known=known)


def view_of(path: Path, top: dict[str, Any], *, mmap: bool, known: View | None = None) -> View:
    """Shard views for an already validated manifest ``top`` (reusing current views of ``known``)."""
    shards: dict[str, Shard] = {}
    for name, entry in sorted(top["shards"].items()):
        old = known.shards.get(name) if known is not None and known.mmap == mmap else None
        same = old is not None and known is not None and known.top["shards"].get(name) == entry
        shards[name] = old if same and old is not None else Shard(path, name, entry, top, mmap=mmap)
    return View(path=path, top=top, shards=shards, mmap=mmap)


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
            "use the index's own encoder (build a new index for another one)"
        )


def commit(
    index_dir: Path,
    top: dict[str, Any],
    updates: Mapping[str, ShardContent],
    operation: dict[str, Any],
    *,
    dropped: Iterable[str] = (),
    before_commit: BeforeCommit | None = None,
    hook_ids: Mapping[str, np.ndarray] | None = None,
    before_drop: BeforeCommit | None = None,
    drop_ids: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write new generations for ``updates``, drop the ``dropped`` shards, then atomically switch the manifest.

    After the generations are written and right before the switch, ``before_drop(shard, ids)`` is called for
    every entry of ``drop_ids`` (records leaving a shard), then ``before_commit(shard, ids)`` for every entry of
    ``hook_ids``; if either raises, the new generations are deleted and the index is unchanged.

    Returns:
        The committed manifest.
    """
    kind = IndexKind(top["index_type"])
    template = load_template(index_dir, top) if updates else None
    new_top = copy.deepcopy(top)
    written: list[str] = []
    try:
        for name, content in updates.items():
            relative = write_shard(
                index_dir, content, kind=kind, template=template, common=common_shard_fields(top)
            )
            written.append(relative)
            new_top["shards"][name] = {"dir": relative, "records": int(len(content.ids))}
        for name in dropped:
            new_top["shards"].pop(name, None)
        for hook, targets in ((before_drop, drop_ids), (before_commit, hook_ids)):
            if hook is not None:
                for name, ids in (targets or {}).items():
                    hook(name, np.array(ids, dtype=np.int64))
    except BaseException:
        for relative in written:
            store.remove_tree(index_dir / relative)
        raise
    new_top["updated"] = store.utc_now()
    new_top["last_operation"] = dict(operation, at=new_top["updated"])
    fs.atomic_write_json(index_dir / store.MANIFEST, new_top)
    resume.clear_all(index_dir)
    drop_unreferenced(index_dir, new_top)
    return new_top


def write_manifest(index_dir: Path, top: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    """Commit a manifest-only change (ledger binding, encoder location): no shard data is touched."""
    new_top = copy.deepcopy(top)
    new_top["updated"] = store.utc_now()
    new_top["last_operation"] = dict(operation, at=new_top["updated"])
    fs.atomic_write_json(index_dir / store.MANIFEST, new_top)
    return new_top


def drop_unreferenced(index_dir: Path, top: dict[str, Any]) -> None:
    """Delete shard generations the manifest does not name (old ones, or leftovers of a crash)."""
    keep = {Path(entry["dir"]).name for entry in top["shards"].values()}
    shards = index_dir / "shards"
    if shards.is_dir():
        for child in shards.iterdir():
            if child.name not in keep:
                store.remove_tree(child)


def describe(view: View) -> dict[str, Any]:
    """The ``--json`` document of an index: counts, shards (records, skipped count, ``empty``, ``storage``), the skipped
    inputs with reasons (for ``--json``; human output prints only the counts, the list only on build), encoder,
    ledger binding and last operation."""
    top = view.top
    skipped = [dict(s, shard=n) for n, sh in view.shards.items() for s in sh.manifest.get("skipped", [])]
    return {
        "records": sum(s.num_records for s in view.shards.values()),
        "dim": int(top["dim"]),
        "index_type": top["index_type"],
        "shards": {
            n: {
                "records": sh.num_records,
                "skipped": len(sh.manifest.get("skipped", [])),
                "empty": sh.num_records == 0,
                "storage": sh.storage,
            }
            for n, sh in view.shards.items()
        },
        "skipped": skipped,
        "encoder": {"model_id": top["encoder"]["model_id"], "sha256": top["encoder"]["sha256"]},
        "quantizer": top["quantizer"]["provenance"],
        "ledger": copy.deepcopy(top.get("ledger")),
        "format_version": top["format_version"],
        "last_operation": copy.deepcopy(top.get("last_operation", {})),
    }


def ledger_location(index_dir: Path, location: str | os.PathLike[str]) -> str:
    """Stored form of a ledger location: a URL as is; a path made absolute, then relative to the index if inside it."""
    text = os.fspath(location)
    if "://" in text:
        return text
    path = fs.expand_user(text).resolve()
    try:
        return str(path.relative_to(index_dir))
    except ValueError:
        return str(path)


def bind_ledger(index_dir: Path, ledger_id: str, location: str | os.PathLike[str]) -> dict[str, Any]:
    """Record the index's one ledger in its manifest (under the writer lock, atomically).

    Re-binding the same ledger id (e.g. after the ledger file moved) updates the location.

    Raises:
        IndexInputError: an empty ledger id.
        LedgerBindingError: the index is already bound to a ledger with another id.
    """
    if not isinstance(ledger_id, str) or not ledger_id:
        raise IndexInputError("ledger id must be a non-empty string; pass Ledger.ledger_id")
    with store.writer_lock(index_dir):
        top = read_top_manifest(index_dir)
        current = top.get("ledger")
        if current is not None and current["id"] != ledger_id:
            raise LedgerBindingError(
                f"index '{index_dir}' is bound to ledger {current['id']} at '{current['location']}', not {ledger_id}; "
                "an index has exactly one ledger: use that ledger"
            )
        binding = {"id": ledger_id, "location": ledger_location(index_dir, location)}
        if current == binding:
            return top
        top["ledger"] = binding
        return write_manifest(index_dir, top, {"op": "bind-ledger"})
