"""The compartments store inside an index directory: adapters, shard classifier and one manifest.

Layout (directories 0700, files 0600)::

    DIR/compartments/manifest.json               the commit point: every entry below with its sha256
    DIR/compartments/adapters/<shard>-<tag>/     one adapter per shard (``pipeline.finetune`` format)
    DIR/compartments/classifier-<tag>.safetensors + classifier-<tag>.json

Every new file or adapter gets a fresh ``<tag>`` and is written completely before the manifest (written with the
project's one atomic write, ``index.fs.atomic_write_json``) names it; files the manifest no longer names are
deleted afterwards. A crash leaves the old or the new manifest, each pointing at complete files. The manifest
carries a sha256 of its own body, and each adapter/classifier file its sha256: :meth:`Compartments.verify`
re-hashes them and refuses any damage (before anything is charged or trained).

Writers (``train_compartments``, ``forget``, ``mark_public``) hold ``DIR/compartments/.lock`` (an exclusive
``fcntl.flock``) from reading the manifest to committing it: across the dry runs, the charges, the training and
the commit. A second writer is refused at once (:class:`CompartmentsBusy`, exit 3), before it reads, checks,
charges, removes or trains anything; it never waits. The lock is released when its holder ends (also on a crash).
Readers (``ComposedDecoder.from_index``) take no lock: they see the old or the new manifest.

``public``: shards the corpus owner explicitly marked public/consented (:func:`mark_public`); only these may have
an adapter trained without DP (``--non-private``).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from index.fs import atomic_write_bytes, atomic_write_json, make_private_dir
from pipeline.errors import PipelineError, PipelineInputError

__all__ = ["COMPARTMENTS_DIR", "Compartments", "CompartmentsBusy", "CompartmentsDamaged", "compartments_lock",
           "mark_public"]

COMPARTMENTS_DIR = "compartments"
FORMAT = "dprdm-compartments"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"


class CompartmentsDamaged(PipelineInputError):
    """A compartments file is missing, changed or unreadable (refused before any charge)."""

    exit_code = 3


class CompartmentsBusy(PipelineError):
    """Another process is training or forgetting on the same compartments (refused before anything happens)."""

    exit_code = 3


@contextlib.contextmanager
def compartments_lock(index_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive compartments writer lock of an index (``DIR/compartments/.lock``) for the block.

    Raises:
        CompartmentsBusy: another process holds it (nothing was read, charged, removed or trained).
    """
    root = Path(index_dir) / COMPARTMENTS_DIR
    make_private_dir(root)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise CompartmentsBusy(f"the compartments of index '{index_dir}' are being trained or forgotten by "
                                   "another process; nothing was charged or removed; wait for it to finish and "
                                   "retry") from err
        yield
    finally:
        os.close(fd)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _body_sha(body: dict[str, Any]) -> str:
    return _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def tree_sha256(folder: Path) -> str:
    """sha256 over (relative name, bytes) of every file under ``folder``, sorted (an adapter's identity)."""
    digest = hashlib.sha256(b"dprdm-tree:v1\n")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\n".encode())
        digest.update(_sha(path.read_bytes()).encode())
    return digest.hexdigest()


class Compartments:
    """The compartments of one index (read, verify, and stage changes committed by :meth:`commit`)."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.root = self.index_dir / COMPARTMENTS_DIR
        self.body: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "base_decoder": None,
                                     "public": {}, "shards": {}, "classifier": None}
        self.exists = (self.root / MANIFEST).is_file()
        if self.exists:
            self.body = self._read()

    # -- reading ------------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CompartmentsDamaged(f"compartments manifest '{path}' is unreadable ({type(err).__name__}); "
                                      "retrain with 'dprdm compartments train'") from err
        body = doc.get("body") if isinstance(doc, dict) else None
        if not isinstance(body, dict) or doc.get("sha256") != _body_sha(body):
            raise CompartmentsDamaged(f"compartments manifest '{path}' fails its checksum; nothing was charged; "
                                      "retrain with 'dprdm compartments train'")
        if body.get("format") != FORMAT or body.get("format_version") != FORMAT_VERSION:
            raise CompartmentsDamaged(f"'{path}' is not a dprdm compartments manifest of version {FORMAT_VERSION}")
        return body

    @property
    def shards(self) -> dict[str, dict[str, Any]]:
        return self.body["shards"]

    @property
    def public(self) -> dict[str, Any]:
        return self.body["public"]

    @property
    def classifier(self) -> dict[str, Any] | None:
        return self.body["classifier"]

    def adapter_dir(self, shard: str) -> Path:
        entry = self.shards.get(shard)
        if entry is None:
            raise PipelineInputError(f"shard '{shard}' has no compartment; train it with 'dprdm compartments train'")
        return self.root / entry["adapter"]

    def verify(self, shards: list[str] | None = None, *, classifier: bool = True) -> Compartments:
        """Re-hash the adapters of ``shards`` (default all) and the classifier; refuse any damage.

        Raises:
            CompartmentsDamaged: a missing or changed file.
        """
        for name in self.shards if shards is None else shards:
            folder = self.adapter_dir(name)
            if not folder.is_dir():
                raise CompartmentsDamaged(f"the adapter of shard '{name}' is missing ({folder}); nothing was charged; "
                                          f"retrain it with 'dprdm compartments train --shard {name}'")
            if tree_sha256(folder) != self.shards[name]["sha256"]:
                raise CompartmentsDamaged(f"the adapter of shard '{name}' fails its checksum; nothing was charged; "
                                          f"retrain it with 'dprdm compartments train --shard {name}'")
        if classifier and self.classifier is not None:
            self.classifier_bytes()
        return self

    def classifier_bytes(self) -> tuple[bytes, bytes]:
        """(weights, config) of the shard classifier, checksums verified.

        Raises:
            CompartmentsDamaged: missing or changed.
        """
        entry = self.classifier
        if entry is None:
            raise PipelineInputError("no shard classifier; train the compartments first (or use --weights naive)")
        try:
            blob, config = (self.root / entry["weights"]).read_bytes(), (self.root / entry["config"]).read_bytes()
        except OSError as err:
            raise CompartmentsDamaged("the shard classifier is missing; nothing was charged; retrain with "
                                      "'dprdm compartments train'") from err
        if _sha(blob) != entry["sha256"] or _sha(config) != entry["config_sha256"]:
            raise CompartmentsDamaged("the shard classifier fails its checksum; nothing was charged; retrain with "
                                      "'dprdm compartments train'")
        return blob, config

    def adapter_hashes(self) -> dict[str, str]:
        """shard -> the adapter's recorded sha256 (over all its files)."""
        return {name: entry["sha256"] for name, entry in sorted(self.shards.items())}

    # -- staging --------------------------------------------------------------------------------------------
    def _ensure_root(self) -> None:
        make_private_dir(self.root)
        make_private_dir(self.root / "adapters")

    def new_adapter_path(self, shard: str) -> Path:
        """A fresh, not yet existing adapter folder for ``shard`` (written by ``save_adapter``)."""
        self._ensure_root()
        return self.root / "adapters" / f"{shard}-{secrets.token_hex(6)}"

    def stage_adapter(self, shard: str, folder: Path, info: dict[str, Any]) -> None:
        """Point ``shard`` at the complete adapter ``folder`` (effective at :meth:`commit`)."""
        self.shards[shard] = dict(info, adapter=str(folder.relative_to(self.root)), sha256=tree_sha256(folder))

    def stage_classifier(self, blob: bytes, config: bytes, info: dict[str, Any]) -> None:
        """Write the classifier's files under a fresh tag (effective at :meth:`commit`)."""
        self._ensure_root()
        tag = secrets.token_hex(6)
        atomic_write_bytes(self.root / f"classifier-{tag}.safetensors", blob)
        atomic_write_bytes(self.root / f"classifier-{tag}.json", config)
        self.body["classifier"] = dict(info, weights=f"classifier-{tag}.safetensors",
                                       config=f"classifier-{tag}.json", sha256=_sha(blob), config_sha256=_sha(config))

    def commit(self) -> None:
        """Write the manifest atomically (the commit point), then delete files it no longer names."""
        self._ensure_root()
        body = copy.deepcopy(self.body)
        atomic_write_json(self.root / MANIFEST, {"body": body, "sha256": _body_sha(body)})
        self.exists = True
        named = {e["adapter"] for e in self.shards.values()}
        for folder in (self.root / "adapters").iterdir():
            if str(folder.relative_to(self.root)) not in named:
                shutil.rmtree(folder, ignore_errors=True)
        keep = set()
        if self.classifier is not None:
            keep = {self.classifier["weights"], self.classifier["config"]}
        for path in self.root.glob("classifier-*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        """What ``dprdm compartments info --json`` prints: per shard whether its adapter carries a DP guarantee."""
        shards = {}
        for name, entry in sorted(self.shards.items()):
            dp = entry.get("dp")
            shards[name] = {"guarantee": "dp" if dp else "none (public/consented shard)",
                            "epsilon": dp.get("epsilon") if dp else None, "delta": dp.get("delta") if dp else None,
                            "records": entry.get("records"), "trainable": entry.get("trainable"),
                            "sha256": entry["sha256"], "public": name in self.public}
        clf = self.classifier
        return {"shards": shards, "public": sorted(self.public),
                "classifier": None if clf is None else {k: clf.get(k) for k in ("shards", "dp", "records", "sha256")},
                "base_decoder": self.body.get("base_decoder")}


def mark_public(index_dir: str | Path, shard: str, *, note: str) -> Compartments:
    """Record that ``shard`` is public or its contributors consented (allows ``--non-private`` on it).

    Args:
        note: who consented / why (stored; required).

    Raises:
        PipelineInputError: an empty note.
        CompartmentsBusy: another process is training or forgetting on this index.
    """
    from datetime import datetime, timezone

    if not note or not note.strip():
        raise PipelineInputError("marking a shard public needs a note saying who consented or why it is public")
    with compartments_lock(index_dir):
        store = Compartments(index_dir)
        store.public[shard] = {"note": note.strip(),
                               "marked": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
        store.commit()
    return store
