"""Private generation: prompt or image → unit query → charged DP retrieval → mix → decoder → images.

One call is one private query: every image of the call is decoded from the same released vector, so they share
one charge (post-processing). The decoder's own randomness may be seeded freely; it only sees the already
private vector and the public query.
"""

from __future__ import annotations

import enum
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.errors import PipelineInputError

if TYPE_CHECKING:
    from PIL import Image

    from accountant import Ledger, Mechanism, Receipt, ScopeStatus
    from index import Encoder
    from pipeline.decoders import Decoder
    from pipeline.retrieve import PrivateRelease, PrivateRetriever

__all__ = ["DPRDMPipeline", "GenerationResult", "QueryKind"]

MAX_IMAGES = 64


class QueryKind(enum.Enum):
    """Which encoder tower embedded the query."""

    TEXT = "text"
    IMAGE = "image"


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationResult:
    """The images of one private query and what the query cost.

    Attributes:
        images (`tuple[PIL.Image.Image, ...]`): ``num_images`` decoded images.
        prompt (`str | None`): the text query (None for an image query).
        query_kind (`QueryKind`): text or image tower.
        mechanism (`accountant.Mechanism`): the ``(k, q, sigma)`` of the targeted scopes.
        lambda_ (`float`): mixing weight λ of the noisy retrieval (``c = λ·noisy + (1−λ)·query``).
        steps (`int`), guidance_scale (`float`): decoder settings.
        release (`PrivateRelease | None`): what the private query released (noisy vector, receipt, budgets after
            the charge); None only for ``λ = 0``, which reads no private record and costs nothing.
        uncharged_statuses (`tuple[accountant.ScopeStatus, ...]`): the scopes' budgets when nothing was charged
            (``λ = 0``); empty otherwise (the release holds them).
    """

    images: tuple[Image.Image, ...]
    prompt: str | None
    query_kind: QueryKind
    mechanism: Mechanism
    lambda_: float
    steps: int
    guidance_scale: float
    release: PrivateRelease | None
    uncharged_statuses: tuple[ScopeStatus, ...] = ()

    @property
    def k(self) -> int:
        """Neighbours averaged per query."""
        return self.mechanism.k

    @property
    def q(self) -> float:
        """Poisson sampling rate of each record."""
        return self.mechanism.q

    @property
    def sigma(self) -> float:
        """Noise standard deviation per coordinate."""
        return self.mechanism.sigma

    @property
    def charged(self) -> bool:
        """False only for ``λ = 0`` (nothing private was read, nothing was charged)."""
        return self.release is not None

    @property
    def receipt(self) -> Receipt | None:
        """The committed charge (None when not charged)."""
        return None if self.release is None else self.release.receipt

    @property
    def statuses(self) -> tuple[ScopeStatus, ...]:
        """Budget of each targeted scope after this query."""
        return self.uncharged_statuses if self.release is None else self.release.statuses

    @property
    def _binding(self) -> ScopeStatus:
        """The scope with the largest ε spent (the one that runs out first)."""
        return max(self.statuses, key=lambda status: status.epsilon_spent)

    @property
    def epsilon_spent(self) -> float:
        """ε spent at δ after this query (the largest over the targeted scopes)."""
        return self._binding.epsilon_spent

    @property
    def delta(self) -> float:
        """δ at which :attr:`epsilon_spent` holds."""
        return self._binding.delta

    @property
    def queries_remaining(self) -> int:
        """Queries still possible on every targeted scope."""
        return min(status.queries_remaining for status in self.statuses)

    def to_dict(self) -> dict[str, Any]:
        """JSON record of the call (no images, ids, scores, vectors or seeds)."""
        return {
            "prompt": self.prompt,
            "query_kind": self.query_kind.value,
            "k": self.k,
            "q": self.q,
            "sigma": self.sigma,
            "lambda": self.lambda_,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "num_images": len(self.images),
            "charged": self.charged,
            "epsilon_spent": self.epsilon_spent,
            "delta": self.delta,
            "epsilon_budget": self._binding.epsilon_budget,
            "queries_remaining": self.queries_remaining,
            "scopes": {
                status.scope: {
                    "epsilon_spent": status.epsilon_spent,
                    "epsilon_budget": status.epsilon_budget,
                    "delta": status.delta,
                    "queries_charged": status.queries_charged,
                    "queries_remaining": status.queries_remaining,
                }
                for status in self.statuses
            },
        }


class DPRDMPipeline:
    """Generate images conditioned on a DP retrieval from a private index (DP-RDM).

    The privacy guarantee is the retriever's (Poisson-subsampled Gaussian, sensitivity 2/k, add/remove-one,
    dp-accounting RDP); mixing and decoding are post-processing. Build it from its parts, or open everything
    from an index folder with :meth:`from_index_dir`.

    Args:
        retriever (`PrivateRetriever`): charges the ledger and releases the noisy neighbour mean.
        encoder (`index.Encoder`): the index's encoder (text and image towers, same space as the index).
        decoder (`pipeline.decoders.Decoder`): maps ``(B, d)`` conditions to images.

    Raises:
        PipelineInputError: the encoder's (or the decoder's condition) width differs from the index's, found
            here, before any query can be charged.
    """

    def __init__(self, retriever: PrivateRetriever, encoder: Encoder, decoder: Decoder) -> None:
        _check_widths(int(encoder.dim), "encoder dimension", retriever.dim)
        _check_widths(int(decoder.condition_dim), "decoder condition width", retriever.dim)
        self.retriever = retriever
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        ledger: Ledger | str | os.PathLike[str] | None = None,
        decoder: Decoder | str | os.PathLike[str] | None = None,
        shards: Sequence[str] | None = None,
        threads: int | None = None,
        decoder_options: dict[str, Any] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        compose: str | None = None,
        engine: str = "local",
        ray_address: str | None = None,
        compose_sampler: dict[str, float] | None = None,
    ) -> DPRDMPipeline:
        """Open an index, its ledger, its encoder and a decoder, checking everything that can refuse a query.

        Order: the index (manifests, encoder hash), the ledger (must exist: a missing ledger is a refusal, never
        created here), the targeted shards' scopes and their shared mechanism, then the models. Nothing is
        charged.

        Args:
            index_dir (`str | os.PathLike`): folder written by ``dprdm index build``.
            ledger (`accountant.Ledger | str | os.PathLike`, *optional*): an open ledger or its path; defaults to
                ``<index_dir>/budget.sqlite``.
            decoder (`Decoder | str | os.PathLike`, *optional*): a decoder or its folder (any family
                :func:`pipeline.decoders.load_decoder` recognises); None = the bundled one.
            shards (`Sequence[str]`, *optional*): shards to query; defaults to every shard.
            threads (`int`, *optional*): torch threads of the encoder, and threads scoring a query's kept rows in
                each shard (``PrivateIndex.open(threads=)``; the top-k does not depend on it).
            decoder_options (`dict`, *optional*): the decoder family's knobs (e.g. ``noise_level``), passed to
                :func:`pipeline.decoders.load_decoder`.
            adapter (`str | os.PathLike`, *optional*): a ``dprdm finetune`` adapter folder applied to the decoder
                (refused, before any charge, when it was trained for another base decoder).
            compose (`str`, *optional*): ``"posterior"`` or ``"naive"``: decode with the targeted shards'
                compartments composed (CDM); the store is verified before any charge.
            engine (`str`, *optional*, defaults to ``"local"``): ``"ray"`` searches each shard in a Ray actor
                (:class:`pipeline.scale.ray_shards.RayShardRetriever`, same mechanism; needs ``dprdm[scale]``),
                joining ``ray_address`` or starting a local Ray.
            compose_sampler (`dict`, *optional*): with ``compose``, the composed sampler's ``eta`` and
                ``base_guidance`` (:class:`pipeline.compartments.ComposedDecoder`).

        Returns:
            `DPRDMPipeline`

        Raises:
            PrivacyRefusal: no ledger at the path, a shard without scope, or scopes with different mechanisms.
            PipelineInputError: unknown shards, or an encoder/decoder width that differs from the index's.
            index.IndexStoreError, accountant.AccountantError: unreadable or damaged index or ledger.
        """
        from index import PrivateIndex
        from pipeline._files import expand_user
        from pipeline.decoders import describe_decoder, load_decoder
        from pipeline.ledgers import index_ledger
        from pipeline.retrieve import PrivateRetriever

        index = PrivateIndex.open(expand_user(index_dir), threads=threads)
        if ledger is None or isinstance(ledger, str | os.PathLike):
            ledger = index_ledger(index, ledger)  # the index's one ledger; any other is refused (exit 3)
        if engine not in ("local", "ray"):
            raise PipelineInputError(f"--engine must be 'local' or 'ray', found {engine!r}; pass one of them")
        if engine == "ray":
            from pipeline.scale.ray_shards import RayShardRetriever

            retriever = RayShardRetriever(index, ledger, shards=shards, address=ray_address)
        else:
            retriever = PrivateRetriever(index, ledger, shards=shards)  # refuses missing / mismatched scopes
        if decoder is None or isinstance(decoder, str | os.PathLike):
            # the decoder's width is read from its config and checked before any model is loaded or charged
            _check_widths(describe_decoder(decoder).condition_dim, "decoder condition width", retriever.dim)
            decoder = load_decoder(decoder, **(decoder_options or {}))
        if adapter is not None:  # a DP fine-tuned adapter (pipeline.finetune); its base-decoder hash is checked
            from pipeline.finetune import load_adapter

            decoder = load_adapter(decoder, expand_user(adapter))
        if compose is not None:  # CDM: the targeted shards' compartments composed with w = P(shard | x_t)
            from pipeline.compartments import ComposedDecoder

            decoder = ComposedDecoder.from_index(index.path, decoder=decoder, allowed=retriever.shards, weights=compose,
                                                 **(compose_sampler or {}))
        encoder = index.load_encoder(num_threads=threads)
        return cls(retriever, encoder, decoder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        *,
        image: Image.Image | None = None,
        num_images: int = 4,
        lambda_: float = 1.0,
        steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        caller: str | None = None,
        _rng: np.random.Generator | None = None,
    ) -> GenerationResult:
        """Run one private query and decode ``num_images`` images from it.

        Args:
            prompt (`str`, *optional*): text query (public). Exactly one of ``prompt`` and ``image``.
            image (`PIL.Image.Image`, *optional*): image query (public), embedded by the image tower.
            num_images (`int`, *optional*, defaults to 4): images decoded from the one released vector.
            lambda_ (`float`, *optional*, defaults to 1.0): λ in ``c = λ·noisy + (1−λ)·query`` (DP-RDM's query
                interpolation); ``λ = 0`` is text/image only, reads no private record and is not charged.
            steps (`int`, *optional*, defaults to 25): decoder denoising steps.
            guidance_scale (`float`, *optional*, defaults to 2.0): classifier-free guidance scale.
            generator (`torch.Generator`, *optional*): the decoder's randomness (may be seeded).
            caller (`str`, *optional*): label recorded with the charge.
            _rng (`np.random.Generator`, *optional*): TEST HOOK ONLY, not part of the API: a seeded generator for
                the retrieval's subsample and noise. Production calls leave it out (a fresh OS-CSPRNG generator).

        Returns:
            `GenerationResult`

        Raises:
            PipelineInputError: bad arguments.
            PrivacyRefusal: missing or mismatched budget scopes (nothing charged).
            accountant.BudgetExceeded, accountant.LedgerUnavailable: nothing charged, nothing decoded.
        """
        # 1. validate inputs
        _check_call(prompt, image, num_images, lambda_, steps, guidance_scale, generator)
        kind = QueryKind.TEXT if prompt is not None else QueryKind.IMAGE
        mechanism = self.retriever.mechanism()

        # 2. encode the (public) query with the index's encoder and unit-normalise it
        raw = self.encoder.encode_text([prompt]) if kind is QueryKind.TEXT else self.encoder.encode_images([image])
        query = np.asarray(raw, dtype=np.float64).reshape(-1)
        query = (query / np.linalg.norm(query)).astype(np.float32)

        # 3. private retrieval: charge first, then subsample/top-k/mean/noise (skipped for λ = 0: no private data)
        release = None
        if lambda_ > 0.0:
            release = self.retriever.retrieve(
                query, caller=caller, purpose=f"generate {kind.value} x{num_images}", _rng=_rng
            )

        # 4. mix (post-processing): c = λ·noisy + (1−λ)·query
        condition = (1.0 - lambda_) * query if release is None else lambda_ * release.vector + (1.0 - lambda_) * query

        # 5. decode: every image shares the one charged release
        conditions = torch.as_tensor(np.asarray(condition, dtype=np.float32)[None, :])
        images = self.decoder.generate(
            conditions,
            num_images_per_condition=num_images,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
        )

        # 6. result
        uncharged = () if release is not None else tuple(
            self.retriever.ledger.status(shard) for shard in self.retriever.shards
        )
        return GenerationResult(
            images=tuple(images),
            prompt=prompt,
            query_kind=kind,
            mechanism=mechanism,
            lambda_=float(lambda_),
            steps=steps,
            guidance_scale=float(guidance_scale),
            release=release,
            uncharged_statuses=uncharged,
        )


def _check_widths(width: int, what: str, index_dim: int) -> None:
    """Refuse an encoder or decoder whose width differs from the index's (before anything is charged)."""
    if width != index_dim:
        fix = (
            "use the index's own encoder (PrivateIndex.load_encoder())"
            if what.startswith("encoder")
            else "pass a decoder that conditions on this index's embedding space (--decoder DIR); see README 'Using real models'"
        )
        raise PipelineInputError(f"{what} {width} does not match the index dimension {index_dim}; {fix}")


def _check_call(
    prompt: str | None,
    image: Image.Image | None,
    num_images: int,
    lambda_: float,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
) -> None:
    """Refuse bad arguments before anything is charged."""
    if (prompt is None) == (image is None):
        raise PipelineInputError("pass exactly one query: a prompt or an image (--image PATH); found "
                                 + ("both" if prompt is not None else "neither"))
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise PipelineInputError(f"prompt must be a non-empty string; found {prompt!r}; pass some text")
    if image is not None and not hasattr(image, "convert"):
        raise PipelineInputError(f"image must be a PIL image; found {type(image).__name__}; open it with PIL.Image.open")
    _check_int("num_images", num_images, 1, MAX_IMAGES, "--n-images")
    _check_int("steps", steps, 1, 1000, "--steps")
    if not isinstance(lambda_, numbers.Real) or isinstance(lambda_, bool) or not 0.0 <= float(lambda_) <= 1.0:
        raise PipelineInputError(f"lambda must be a number in [0, 1]; found {lambda_!r}; pass e.g. --lambda 1.0")
    if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise PipelineInputError(f"guidance must be a finite number ≥ 0; found {guidance_scale!r}; pass e.g. --guidance 2.0")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise PipelineInputError(f"generator must be a torch.Generator; found {type(generator).__name__}")


def _check_int(name: str, value: int, low: int, high: int, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise PipelineInputError(f"{name} must be an integer in [{low}, {high}]; found {value!r}; pass e.g. {flag} {low}")
