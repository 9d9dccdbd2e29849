"""On-disk cache of training-set features, one file per (method, K, P, seed), stamped with the model hash.

Layout: ``<root>/<method>-K<K>-P<P>-s<seed>.npz`` (folder 0700, files 0600: the features are derived from private
records). Each file stores the model hash it was computed under; a lookup under another model deletes it (a model
change invalidates the cache). ``drop(ids)`` rewrites every file without the removed records' rows, so
``index remove`` / ``forget`` can shrink it. Writes are atomic (temp file + fsync + rename).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.attribution.features import Features


def _atomic_write(path: Path, data: bytes) -> None:
    """The project's one atomic write (``index.fs``), owner-only."""
    from index.fs import atomic_write_bytes

    atomic_write_bytes(path, data, mode=0o600)


def read_entry(path: str | os.PathLike) -> Features:
    """The features stored in one cache file (whatever model they belong to)."""
    with np.load(path, allow_pickle=False) as z:
        sources = tuple(str(s) for s in z["sources"]) if "sources" in z.files else None
        return Features(phi=z["phi"], method=str(z["method"]), timesteps=int(z["timesteps"]),
                        projection_dim=int(z["projection_dim"]), seed=int(z["seed"]),
                        model_hash=str(z["model_hash"]), ids=z["ids"], sources=sources,
                        residual=z["residual"] if "residual" in z.files else None)


class FeatureCache:
    """Features of one model's training set, cached under ``root``.

    Args:
        root: the cache folder (created 0700).
        model_hash: ``AttributionModel.model_hash`` of the model being attributed.
    """

    def __init__(self, root: str | os.PathLike, model_hash: str) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.model_hash = model_hash

    def path(self, method: str, timesteps: int, projection_dim: int, seed: int) -> Path:
        return self.root / f"{method}-K{timesteps}-P{projection_dim}-s{seed}.npz"

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("*.npz"))

    def _read(self, path: Path) -> Features:
        return read_entry(path)

    def get(self, method: str, timesteps: int, projection_dim: int, seed: int, *, ids=None) -> Features | None:
        """The cached features (rows in ``ids`` order if given), or None when absent, stale or missing a record.

        A file computed under another model is deleted.
        """
        path = self.path(method, timesteps, projection_dim, seed)
        if not path.exists():
            return None
        feats = self._read(path)
        if feats.model_hash != self.model_hash:
            path.unlink(missing_ok=True)
            return None
        if ids is None:
            return feats
        want = np.asarray(ids, dtype=np.int64)
        order = {int(r): i for i, r in enumerate(feats.ids)}
        if any(int(r) not in order for r in want):
            return None
        return feats.take([order[int(r)] for r in want])

    def put(self, feats: Features) -> Path:
        """Store ``feats`` (computed under this cache's model), replacing the entry of the same key."""
        if feats.model_hash != self.model_hash:
            raise ValueError(f"features of model {feats.model_hash[:12]} cannot go in the cache of "
                             f"{self.model_hash[:12]}")
        arrays = {"phi": feats.phi, "method": np.array(feats.method.removesuffix("-squared")),
                  "timesteps": np.array(feats.timesteps), "projection_dim": np.array(feats.projection_dim),
                  "seed": np.array(feats.seed), "model_hash": np.array(feats.model_hash), "ids": feats.ids}
        if feats.sources is not None:
            arrays["sources"] = np.array(feats.sources, dtype=str)
        if feats.residual is not None:
            arrays["residual"] = feats.residual
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = self.path(str(arrays["method"]), feats.timesteps, feats.projection_dim, feats.seed)
        _atomic_write(path, buf.getvalue())
        return path

    def drop(self, ids: Iterable[int]) -> int:
        """Remove the rows of ``ids`` from every entry of this model; returns the number of rows removed."""
        ids = np.asarray(list(ids), dtype=np.int64)
        removed = 0
        for path in self.entries():
            feats = self._read(path)
            if feats.model_hash != self.model_hash:
                continue
            kept = feats.drop(ids)
            if len(kept) != len(feats):
                removed += len(feats) - len(kept)
                self.put(kept)
        return removed

    def rows(self) -> int:
        """Rows held for this model, over every entry."""
        feats = (self._read(p) for p in self.entries())
        return sum(len(f) for f in feats if f.model_hash == self.model_hash)
