"""Sharded private queries on Ray: one actor per shard holds its vectors; the coordinator runs the mechanism.

:class:`RayShardRetriever` is a drop-in :class:`pipeline.PrivateRetriever` (usable by
:class:`pipeline.DPRDMPipeline`): the same checks, the same charge, the same mechanism, only the per-shard search
runs inside a Ray actor that loaded the shard (``PrivateIndex.open(...).shard(name).load()`` on the actor, on
any node of the cluster).

One query (the order of :meth:`pipeline.PrivateRetriever.retrieve`, unchanged):

1. the query is checked (dimension, finite, unit norm) and every targeted shard actor reports its N after
   loading and checking its files (a damaged shard fails here, nothing charged);
2. the ledger is charged, one transaction over every targeted scope; a refusal releases nothing and no actor
   is asked anything;
3. every targeted actor is asked, in parallel, for the ≤ k best of ITS OWN fresh Poisson subsample at rate q:
   it runs :func:`pipeline.mechanism._subsample_search` on its shard with the generator spawned for it
   (:func:`pipeline.retrieve.shard_streams`: child ``i`` of the per-query generator, exactly what the local path
   gives shard ``i``);
4. the coordinator merges exactly (score, then shard order, then id: :func:`pipeline.retrieve.merge_topk`),
   fetches the ≤ k chosen rows from their actors, takes the zero-padded mean and adds the Gaussian noise itself.

Privacy: the union of independent per-shard Poisson subsamples at rate q is a Poisson subsample of the union,
and steps 3–4 compute exactly the local path's top-k, mean and noise, so the mechanism, its 2/k sensitivity and
its accounting are the local ones (``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))`` per scope and query).
Ids, scores and positions travel only between the coordinator and its actors (processes of the Ray cluster);
the released :class:`pipeline.PrivateRelease` holds only the noisy vector and the receipt, as locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import PrivacyRefusal
from pipeline.mechanism import _subsample_search
from pipeline.retrieve import PrivateRetriever, merge_topk, shard_streams
from pipeline.scale import require_ray

if TYPE_CHECKING:
    from accountant import Ledger
    from index import PrivateIndex

__all__ = ["RayShardRetriever", "ShardActorPool", "ShardServer"]


class ShardServer:
    """The body of one shard actor: opens the index on its node and keeps one shard loaded (checked once).

    Its answers (ids, scores, positions, rows) are private values and go only to the coordinator.
    """

    def __init__(self, index_path: str, shard: str, *, mmap: bool = False) -> None:
        from index import PrivateIndex

        # An error in an actor's constructor reaches the caller only as Ray's ActorDiedError; keep it and raise it
        # from describe(), so the coordinator re-raises the index's own error (IndexCorruptError, exit 3).
        self._error: Exception | None = None
        try:
            self._shard = PrivateIndex.open(index_path, mmap=mmap).shard(shard).load()
        except Exception as err:  # noqa: BLE001
            self._error = err

    def describe(self) -> tuple[str, int, int]:
        """``(generation directory, N, d)`` of the loaded shard (public facts); the load error, if loading failed."""
        if self._error is not None:
            raise self._error
        return str(self._shard.path), int(self._shard.num_records), int(self._shard.dim)

    def search(
        self, query: np.ndarray, k: int, q: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, scores, positions)`` of the ≤ k best of a fresh Poisson subsample of this shard (the local code)."""
        return _subsample_search(self._shard, query, k, q, rng)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The float32 rows at ``positions`` (the chosen neighbours only)."""
        return self._shard.rows(positions)


class RayShardRetriever(PrivateRetriever):
    """:class:`pipeline.PrivateRetriever` whose shards are searched by Ray actors (one per targeted shard).

    Args:
        index (`index.PrivateIndex`): the opened index (the coordinator reads only its manifests; the actors load the
            vectors). Its directory must be readable at the same path on every node that hosts an actor.
        ledger (`accountant.Ledger`): the index's own ledger (SQLite or PostgreSQL), charged by the coordinator.
        shards (`Sequence[str]`, *optional*): shards to query; defaults as :class:`pipeline.PrivateRetriever`.
        address (`str`, *optional*): Ray cluster to join (``"auto"``, ``"ray://host:10001"``) when Ray is not
            initialised yet; ``None`` starts a local Ray.
        num_cpus (`float`): CPUs reserved per shard actor (default 1).
        mmap (`bool`): actors memory-map their shard instead of reading it into memory.

    Raises:
        PipelineInputError: Ray is not installed (one line: how to install it), or a bad shard selection.
        PrivacyRefusal: missing or mismatched scopes, or an actor's shard differs from the coordinator's view.
        index.IndexCorruptError: an actor found its shard damaged (when constructing; nothing charged).
    """

    def __init__(
        self,
        index: PrivateIndex,
        ledger: Ledger,
        *,
        shards: Sequence[str] | None = None,
        address: str | None = None,
        num_cpus: float = 1,
        mmap: bool = False,
    ) -> None:
        ray = require_ray()
        super().__init__(index, ledger, shards=shards)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._ray = ray
        remote = ray.remote(ShardServer).options(num_cpus=num_cpus)
        self._actors: list[Any] = [remote.remote(str(index.path), name, mmap=mmap) for name in self.shards]
        try:
            self._describe()  # every actor has loaded and checked its shard (errors surface here, before any charge)
        except BaseException:
            self.close()
            raise

    def _get(self, refs):
        """``ray.get`` that re-raises an actor's own error (IndexCorruptError, ...) rather than Ray's wrapper."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def _describe(self) -> dict[str, int]:
        found = self._get([actor.describe.remote() for actor in self._actors])
        records = {}
        for name, (path, count, dim) in zip(self.shards, found, strict=True):
            mine = self.index.shard(name)
            if path != str(mine.path) or count != mine.num_records or dim != self.dim:
                raise PrivacyRefusal(
                    f"the Ray actor of shard {name!r} serves another generation than this index's manifest "
                    "(the index changed since it was opened); open the index again and make a new retriever"
                )
            records[name] = count
        return records

    def _load_targets(self) -> dict[str, int]:
        """Each targeted shard's N as its actor loaded and checked it (the coordinator loads no vectors)."""
        return self._describe()

    def _neighbours(self, query: np.ndarray, k: int, q: float, rng: np.random.Generator) -> np.ndarray:
        streams = shard_streams(rng, len(self.shards))
        found = self._get(
            [actor.search.remote(query, k, q, stream) for actor, stream in zip(self._actors, streams, strict=True)]
        )
        chosen = merge_topk(found, k)
        rows = self._get([self._actors[owner].rows.remote(positions) for owner, positions in chosen])
        return np.concatenate(rows, axis=0) if rows else np.empty((0, self.dim), dtype=np.float32)

    def close(self) -> None:
        """Stop the shard actors (Ray itself stays initialised)."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []

    def __enter__(self) -> RayShardRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardActorPool:
    """One Ray actor per shard of an index, created once and shared by many retrievers (``dprdm serve``).

    A service answers many shard selections (each key's access set, each request's ``shards``); with a
    :class:`RayShardRetriever` per selection every selection would load its own copy of each shard. The pool loads
    each shard once, in one actor, and :meth:`retriever` hands out retrievers over any selection that reuse those
    actors (same checks, same charge, same mechanism as :class:`RayShardRetriever`).

    Args:
        index (`index.PrivateIndex`): the opened index (readable at the same path on every node hosting an actor).
        address (`str`, *optional*): Ray cluster to join when Ray is not initialised yet; ``None`` starts a local
            Ray, which :meth:`close` shuts down again.
        num_cpus (`float`, *optional*): CPUs reserved per actor; default ``min(1, cluster CPUs / shards)`` so that
            every shard's actor can be placed on a small cluster too.
        mmap (`bool`): actors memory-map their shard instead of reading it into memory.

    Raises:
        PipelineInputError: Ray is not installed (one line: how to install it).
        PrivacyRefusal, index.IndexCorruptError: an actor's shard differs from the manifest or is damaged (the
            actors already started are killed).
    """

    def __init__(
        self,
        index: PrivateIndex,
        *,
        address: str | None = None,
        num_cpus: float | None = None,
        mmap: bool = False,
    ) -> None:
        ray = require_ray()
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.index = index
        names = list(index.shard_names)
        if num_cpus is None:
            num_cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1.0)) / max(1, len(names)))
        remote = ray.remote(ShardServer).options(num_cpus=num_cpus)
        self._actors: dict[str, Any] = {name: remote.remote(str(index.path), name, mmap=mmap) for name in names}
        try:
            if names:  # every actor has loaded and checked its shard (errors surface now, before any query)
                _PooledRetriever(self, None, names, check=False)._describe()
        except BaseException:
            self.close()
            raise

    @property
    def shards(self) -> tuple[str, ...]:
        """The shards that have an actor (every shard of the index when the pool was created)."""
        return tuple(self._actors)

    def retriever(self, ledger: Ledger, shards: Sequence[str] | None = None) -> RayShardRetriever:
        """A :class:`RayShardRetriever` over ``shards`` that uses this pool's actors (closing it kills none).

        Raises:
            PipelineInputError, PrivacyRefusal: as :class:`pipeline.PrivateRetriever` (bad selection, scopes).
        """
        return _PooledRetriever(self, ledger, shards, check=True)

    def close(self) -> None:
        """Kill the actors, and shut Ray down when this pool started it."""
        for actor in self._actors.values():
            with suppress(Exception):  # an actor that already died
                self._ray.kill(actor)
        self._actors = {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> ShardActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PooledRetriever(RayShardRetriever):
    """A :class:`RayShardRetriever` whose actors belong to a :class:`ShardActorPool` (built by ``pool.retriever``)."""

    def __init__(self, pool: ShardActorPool, ledger: Any, shards: Sequence[str] | None, *, check: bool) -> None:
        if check:
            PrivateRetriever.__init__(self, pool.index, ledger, shards=shards)  # selection, own ledger, scopes
        else:  # the pool's own start-up check: no ledger, every shard
            self.index, self.ledger, self.shards = pool.index, ledger, tuple(shards or ())
        missing = [name for name in self.shards if name not in pool.shards]
        if missing:
            raise PrivacyRefusal(
                f"shard {missing[0]!r} has no Ray actor (it was added after the service started); restart the service"
            )
        self._ray = pool._ray
        self._actors = [pool._actors[name] for name in self.shards]

    def close(self) -> None:
        """Forget the actors (the pool owns them and kills them in :meth:`ShardActorPool.close`)."""
        self._actors = []
