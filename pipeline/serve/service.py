"""The state behind ``dprdm serve``: the index, its one ledger, the key store, the models and one pipeline per
shard selection. No web framework here; :mod:`pipeline.serve.app` maps HTTP onto it.

Order of one generation request (the CLI's order, with the key checks in front):

1. the key (authenticated by the app), its access set (403) and the parameters (422) are checked; with
   ``"compose": true`` the compartments of exactly the request's shards are checked too (:mod:`pipeline.serve.
   compose`: 409 ``compartments_unavailable``, 503 ``compartments_damaged``);
2. an uploaded image is decoded through the index build's guards (:func:`index.sources.decode_image`:
   decompression bombs and oversized images refused, 422);
3. the key's quota is reserved, durably (429 when used up; see :mod:`pipeline.serve.keys` for why first);
4. :class:`pipeline.DPRDMPipeline` runs: encode, **charge the ledger and commit** (group commit), retrieve,
   noise, mix, decode (batched; composed decodes one request at a time). A ledger refusal releases the
   reservation and answers 409 ``budget_exhausted``; nothing was charged or released;
5. the images are encoded as PNG and returned, after the commit.

Engines: ``local`` searches the shards in this process (every shard loaded once at start-up); ``ray`` starts (or
joins) Ray and creates ONE actor per shard at start-up (:class:`pipeline.scale.ray_shards.ShardActorPool`); every
shard selection's retriever reuses those actors, and :meth:`Service.close` kills them (and shuts Ray down when the
service started it). The coordinator — this process — still checks, charges (group commit), merges and adds the
noise: the same mechanism and accounting as the local engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.serve.errors import (
    BudgetExhausted,
    BudgetNotConfigured,
    InvalidRequest,
    ServiceUnavailable,
    ShardForbidden,
)
from pipeline.serve.keys import ApiKey, KeyStore

__all__ = ["ServeConfig", "Service"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    """Settings of one ``dprdm serve`` process.

    Attributes:
        index_dir: the private index folder (its ledger and ``keys.sqlite`` are found from it).
        decoder: decoder folder (None = the bundled tiny decoder).
        max_batch: most condition rows per decoder call (1 = no dynamic batching).
        group_commit: commit concurrent charges in groups (False = one transaction per charge).
        max_body_bytes: request body limit (413 above it).
        max_pixels: width × height limit of an uploaded image (the index build's decompression-bomb guard).
        max_images: most images per request. max_steps: most decoder steps per request.
        cors_origins: origins allowed by CORS (empty = no CORS headers at all).
        threads: torch threads (None = torch's default).
        ledger: the index's ledger given explicitly (a file or a ``postgresql://`` URL; None = the bound one).
        engine: ``"local"`` or ``"ray"`` (shards searched by Ray actors, one per shard, shared by all requests).
        ray_address: Ray cluster to join with ``engine="ray"`` (``"auto"``, ...); None starts a local Ray.
    """

    index_dir: Path
    decoder: Path | None = None
    max_batch: int = 16
    group_commit: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_images: int = 16
    max_steps: int = 200
    cors_origins: tuple[str, ...] = ()
    threads: int | None = None
    ledger: str | None = None
    engine: str = "local"
    ray_address: str | None = None

    def to_env(self) -> dict[str, Any]:
        """JSON form (passed to worker processes)."""
        return {
            "index_dir": str(self.index_dir),
            "decoder": None if self.decoder is None else str(self.decoder),
            "max_batch": self.max_batch,
            "group_commit": self.group_commit,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_images": self.max_images,
            "max_steps": self.max_steps,
            "cors_origins": list(self.cors_origins),
            "threads": self.threads,
            "ledger": self.ledger,
            "engine": self.engine,
            "ray_address": self.ray_address,
        }

    @classmethod
    def from_env(cls, data: dict[str, Any]) -> ServeConfig:
        """Inverse of :meth:`to_env`."""
        return cls(
            **(
                data
                | {
                    "index_dir": Path(data["index_dir"]),
                    "decoder": None if data.get("decoder") is None else Path(data["decoder"]),
                    "cors_origins": tuple(data.get("cors_origins", ())),
                }
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """One validated generation request (the app builds it from the JSON body)."""

    prompt: str | None
    image: str | None
    n: int
    lambda_: float
    steps: int
    guidance: float
    shards: tuple[str, ...] | None
    compose: str | None = None  # "posterior" or "naive": decode with the shards' compartments composed (CDM)
    sampler: tuple[float, float] = (0.0, 1.0)  # with compose: (η, base guidance g), checked by check_sampler


@dataclass
class Service:
    """Everything one server process holds open. Build it with :meth:`open`."""

    config: ServeConfig
    index: Any
    ledger: Any
    keys: KeyStore
    encoder: Any
    decoder: Any
    pool: Any = None
    composed: Any = None
    _pipelines: dict[tuple[str, ...], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, config: ServeConfig) -> Service:
        """Open the index, its one ledger (refusing any other), the key store and the models; load every shard.

        Raises:
            PrivacyRefusal, accountant.LedgerUnavailable: no or foreign ledger (exit 3).
            KeyStoreUnavailable: no key store yet (``dprdm keys add`` creates it) or a damaged one.
            PipelineInputError: a decoder of another width, an unknown engine, Ray not installed (``engine="ray"``).
            index.IndexCorruptError: a damaged shard (found by its Ray actor with ``engine="ray"``).
        """
        from index import PrivateIndex
        from pipeline.decoders import describe_decoder, load_decoder
        from pipeline.errors import PipelineInputError
        from pipeline.generate import _check_widths
        from pipeline.ledgers import index_ledger
        from pipeline.serve.batching import BatchingDecoder, GroupCommitLedger, LockedEncoder
        from pipeline.serve.compose import ComposedDecoders

        if config.engine not in ("local", "ray"):
            raise PipelineInputError(f"--engine must be 'local' or 'ray', found {config.engine!r}; pass one of them")
        if config.engine == "ray":
            from pipeline.scale import require_ray

            require_ray()  # one line saying how to install it, before anything is opened
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        idx = PrivateIndex.open(config.index_dir)
        keys = KeyStore.for_index(idx.path)
        ledger = index_ledger(idx, config.ledger)
        if config.engine == "local":
            for name in idx.shard_names:
                idx.shard(name).load()  # damage surfaces now; the request threads then only read
        _check_widths(describe_decoder(config.decoder).condition_dim, "decoder condition width", int(idx.dim))
        base = load_decoder(config.decoder)
        encoder = LockedEncoder(idx.load_encoder(num_threads=config.threads))
        pool = None
        if config.engine == "ray":  # one actor per shard, loaded and checked now (a damaged shard stops start-up)
            from pipeline.scale.ray_shards import ShardActorPool

            pool = ShardActorPool(idx, address=config.ray_address)
        decoder = BatchingDecoder(base, max_batch=config.max_batch)
        book = GroupCommitLedger(ledger) if config.group_commit else ledger
        return cls(
            config=config, index=idx, ledger=book, keys=keys, encoder=encoder, decoder=decoder, pool=pool,
            composed=ComposedDecoders(idx.path, base),
        )

    def close(self) -> None:
        """Stop the worker threads, kill the Ray shard actors (and Ray, if this service started it), close files."""
        from pipeline.serve.batching import BatchingDecoder, GroupCommitLedger

        if isinstance(self.decoder, BatchingDecoder):
            self.decoder.close()
        if isinstance(self.ledger, GroupCommitLedger):
            self.ledger.close()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.keys.close()

    # -- helpers --------------------------------------------------------------------------------------------
    def pipeline(self, shards: tuple[str, ...]) -> Any:
        """The pipeline of one shard selection (built once; refuses missing or mismatched scopes)."""
        with self._lock:
            pipe = self._pipelines.get(shards)
            if pipe is None:
                from pipeline.generate import DPRDMPipeline
                from pipeline.retrieve import PrivateRetriever

                if self.pool is not None:  # engine "ray": a retriever over the shared shard actors
                    retriever = self.pool.retriever(self.ledger, shards)
                else:
                    retriever = PrivateRetriever(self.index, self.ledger, shards=shards)
                pipe = DPRDMPipeline(retriever, self.encoder, self.decoder)
                self._pipelines[shards] = pipe
            return pipe

    def allowed_shards(self, key: ApiKey) -> tuple[str, ...]:
        """The key's shards that the index still has, in the key's order."""
        present = set(self.index.shard_names)
        return tuple(name for name in key.shards if name in present)

    def select_shards(self, key: ApiKey, requested: Sequence[str] | None) -> tuple[str, ...]:
        """The shards of a request: all of the key's by default; any other shard is 403 (existing or not)."""
        allowed = self.allowed_shards(key)
        if requested is None:
            if not allowed:
                raise ShardForbidden("this key's access set holds no shard of the index; ask the operator")
            return allowed
        chosen = tuple(dict.fromkeys(str(s) for s in requested))
        if not chosen:
            raise InvalidRequest("shards must name at least one shard; leave it out for all of the key's shards")
        for name in chosen:
            if name not in allowed:
                raise ShardForbidden(f"shard {name[:64]!r} is not in this key's access set; GET /v1/shards lists them")
        return chosen

    def decode_upload(self, data: str) -> Any:
        """A base64 image upload, decoded through the index build's guards (decompression bombs refused)."""
        from index.sources import Decoded, decode_image

        if "," in data[:64] and data.startswith("data:"):
            data = data.split(",", 1)[1]  # a data: URL from the web page
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("image must be base64-encoded image bytes; found something else") from None
        decoded = decode_image(raw, "upload", max_pixels=self.config.max_pixels)
        if not isinstance(decoded, Decoded):
            raise InvalidRequest(f"image refused: {decoded.reason}")
        return decoded.image

    # -- endpoints ------------------------------------------------------------------------------------------
    def generate(self, key: ApiKey, request: GenerationRequest) -> dict[str, Any]:
        """One private generation for ``key`` (steps in the module docstring)."""
        from accountant import BudgetExceeded, DeltaRefused, LedgerUnavailable
        from pipeline.errors import PipelineInputError, PrivacyRefusal

        shards = self.select_shards(key, request.shards)
        image = None if request.image is None else self.decode_upload(request.image)
        try:
            pipe = self.pipeline(shards)
        except PrivacyRefusal as err:  # a shard without a scope, or scopes that disagree: before any charge
            raise BudgetNotConfigured(
                f"shard(s) {', '.join(shards)} cannot be queried together: {err}; nothing was charged"
            ) from err
        composed = None
        if request.compose is not None:  # checked (store verified) before anything is reserved or charged
            from pipeline.generate import DPRDMPipeline

            composed = self.composed.for_request(shards, request.compose, request.sampler)
            pipe = DPRDMPipeline(pipe.retriever, self.encoder, composed)
        charged = request.lambda_ > 0.0
        if charged:
            key = self.keys.reserve(key.key_id)
        try:
            result = pipe(
                request.prompt,
                image=image,
                num_images=request.n,
                lambda_=request.lambda_,
                steps=request.steps,
                guidance_scale=request.guidance,
                caller=key.name,
            )
        except (BudgetExceeded, DeltaRefused) as err:
            if charged:
                self.keys.release(key.key_id)  # refused by the ledger: nothing charged, give the quota back
            which = ", ".join(shards)
            raise BudgetExhausted(
                f"the privacy budget of shard(s) {which} does not admit another query; nothing was charged or "
                "released"
            ) from err
        except PipelineInputError as err:
            if charged:
                self.keys.release(key.key_id)  # input errors are raised before the charge
            raise InvalidRequest(str(err)) from err
        except (LedgerUnavailable, PrivacyRefusal) as err:
            # not released: a failed commit may be ambiguous, and over-counting the quota is the safe side
            raise ServiceUnavailable(
                "the budget ledger cannot be used right now; nothing was released; retry later"
            ) from err
        images = []
        for picture in result.images:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        key_left = key.queries_remaining
        shard_left = result.queries_remaining
        receipt = result.receipt
        attribution = {} if composed is None else {"shard_weights": dict(composed.shard_weights)}
        return attribution | {
            "images": images,
            "charged": result.charged,
            "shards": list(shards),
            "epsilon_spent": result.epsilon_spent,
            "epsilon_budget": max(s.epsilon_budget for s in result.statuses),
            "delta": result.delta,
            "queries_remaining": shard_left if key_left is None else min(shard_left, key_left),
            "shard_queries_remaining": shard_left,
            "key_queries_remaining": key_left,
            "receipt": None
            if receipt is None
            else {
                "group_id": receipt.group_id,
                "time": receipt.time,
                "scopes": [line.to_dict() for line in receipt.lines],
            },
        }

    def budget(self, key: ApiKey) -> dict[str, Any]:
        """The key's quota and the budget of each of its shards."""
        shards = []
        for name in self.allowed_shards(key):
            status = self.ledger.status(name)
            shards.append(
                {
                    "shard": name,
                    "epsilon_spent": status.epsilon_spent,
                    "epsilon_budget": status.epsilon_budget,
                    "delta": status.delta,
                    "queries_charged": status.queries_charged,
                    "queries_remaining": status.queries_remaining,
                }
            )
        shard_left = min((s["queries_remaining"] for s in shards), default=0)
        key_left = key.queries_remaining
        return {
            "key": {
                "name": key.name,
                "max_queries": key.max_queries,
                "max_epsilon": key.max_epsilon,
                "used": key.used,
                "queries_remaining": key_left,
            },
            "shards": shards,
            "queries_remaining": shard_left if key_left is None else min(shard_left, key_left),
        }

    def shards(self, key: ApiKey) -> list[dict[str, Any]]:
        """The key's shards with their public mechanism and budget parameters (nothing about records)."""
        out = []
        for name in self.allowed_shards(key):
            status = self.ledger.status(name)
            out.append(
                {
                    "name": name,
                    "k": status.k,
                    "q": status.q,
                    "sigma": status.sigma,
                    "epsilon_budget": status.epsilon_budget,
                    "delta": status.delta,
                }
            )
        return out


def config_from_environment() -> ServeConfig:
    """The config a worker process was started with (``DPRDM_SERVE_CONFIG``, set by ``dprdm serve``)."""
    import json

    return ServeConfig.from_env(json.loads(os.environ["DPRDM_SERVE_CONFIG"]))
