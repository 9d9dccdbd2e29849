"""``"compose": true`` requests: the targeted shards' compartments (CDM adapters) composed at sampling time.

The counterpart of ``dprdm generate --compose [--shard ...] [--weights ...]`` for the service. Per request, BEFORE
the key's quota is reserved or the ledger charged:

1. the compartments manifest is read (its own checksum; damaged → 503 ``compartments_damaged``);
2. every shard of the request (the key's access set, intersected with the requested shards) must have a
   compartment (none trained, or one missing → 409 ``compartments_unavailable``);
3. the adapters of exactly those shards (and the shard classifier for ``posterior``) are re-hashed
   (:meth:`pipeline.compartments.Compartments.verify`; a changed or missing file → 503 ``compartments_damaged``).

Nothing of another shard's adapter is read or loaded, so its file may be absent. The composed decoder of a
selection is built once by :meth:`pipeline.compartments.ComposedDecoder.from_index` and kept while the manifest's
hashes of its parts stay the same (a retrain or ``forget`` builds a new one). :class:`ComposedDecoder` keeps the
attribution of its last ``generate`` on itself, so each request decodes through a :class:`RequestDecoder` that
holds the selection's lock for the decode and keeps that request's own ``shard_weights``. Composed decodes are
not batched across requests: their ``shard_weights`` (the mean of w_i over the trajectory) is per request.

Everything here is post-processing of DP releases (adapters and classifier were charged when trained) and of the
request's own released vector; it reads no private record and changes nothing in the accounting.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.serve.errors import CompartmentsDamagedError, CompartmentsUnavailable

__all__ = ["ComposedDecoders", "RequestDecoder"]

WEIGHT_MODES = ("posterior", "naive")


@dataclass
class _Entry:
    parts: tuple[str, ...]
    decoder: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class RequestDecoder:
    """One request's view of a shared composed decoder: decodes under its lock, keeps its own ``shard_weights``."""

    def __init__(self, composed: Any, lock: threading.Lock) -> None:
        self._composed = composed
        self._lock = lock
        self.shard_weights: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._composed, name)

    def generate(self, conditions: Any, **settings: Any) -> list[Any]:
        """:meth:`pipeline.compartments.ComposedDecoder.generate`, one request at a time per selection."""
        with self._lock:
            images = self._composed.generate(conditions, **settings)
            self.shard_weights = dict(self._composed.shard_weights)
        return images


class ComposedDecoders:
    """The composed decoders of one service, one per (shard selection, weight mode), checked on every request.

    Args:
        index_dir: the index folder (its ``compartments/`` store is read, never written).
        base: the service's public base decoder (the adapters' base; its hash is checked when loading them).
    """

    def __init__(self, index_dir: Path, base: Any) -> None:
        self._index_dir = Path(index_dir)
        self._base = base
        self._entries: dict[tuple[tuple[str, ...], str, tuple[float, float]], _Entry] = {}
        self._lock = threading.Lock()

    def for_request(self, shards: Sequence[str], weights: str, sampler: tuple[float, float]) -> RequestDecoder:
        """The checked composed decoder of ``shards`` (steps 1–3 of the module docstring); nothing is charged.

        ``sampler`` is the request's (η, base guidance g), already checked by ``check_sampler``.

        Raises:
            CompartmentsUnavailable: no compartments trained, a shard without one, or compartments unusable with
                this server's decoder (409).
            CompartmentsDamagedError: a damaged manifest, adapter or classifier (503).
        """
        from pipeline.compartments import Compartments, CompartmentsDamaged, ComposedDecoder
        from pipeline.errors import PipelineInputError

        names = list(shards)
        posterior = weights == "posterior"
        try:
            store = Compartments(self._index_dir)
            if not store.exists or not store.shards:
                raise CompartmentsUnavailable(
                    "this index has no compartments; the operator trains them with 'dprdm compartments train', or "
                    "leave out 'compose'"
                )
            missing = [name for name in names if name not in store.shards]
            if missing:
                raise CompartmentsUnavailable(
                    f"shard {missing[0][:64]!r} has no compartment; pick other shards or leave out 'compose'"
                )
            if posterior and store.classifier is None:
                raise CompartmentsUnavailable("this index has no shard classifier; send \"weights\": \"naive\"")
            store.verify(names, classifier=posterior)
            parts = tuple(store.shards[name]["sha256"] for name in names)
            parts += (store.classifier["sha256"],) if posterior else ()
            with self._lock:
                key = (tuple(names), weights, sampler)
                entry = self._entries.get(key)
                if entry is None or entry.parts != parts:
                    composed = ComposedDecoder.from_index(
                        self._index_dir, decoder=self._base, allowed=names, weights=weights, eta=sampler[0],
                        base_guidance=sampler[1],
                    )
                    entry = self._entries[key] = _Entry(parts, composed)
        except CompartmentsDamaged as err:
            raise CompartmentsDamagedError(
                "the compartments of this index are damaged; nothing was charged; the operator retrains them with "
                "'dprdm compartments train'"
            ) from err
        except PipelineInputError as err:  # e.g. adapters trained for another base decoder than this server's
            raise CompartmentsUnavailable(
                "the compartments of this index cannot be used by this server's decoder; nothing was charged; "
                "the operator retrains them with 'dprdm compartments train'"
            ) from err
        return RequestDecoder(entry.decoder, entry.lock)
