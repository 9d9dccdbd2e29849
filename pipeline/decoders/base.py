"""The decoder seam: anything that turns (already private) aggregated embeddings into images.

A decoder only ever sees the output of the DP mechanism (the noisy aggregate), so everything it does is
post-processing: it may be seeded freely and costs no privacy budget.

Every decoder states the width of the conditions it takes (``condition_dim``), so a caller can refuse an
encoder/decoder mismatch before any charge, and identifies its weights (``model_id``, ``sha256``) so adapters and
attribution can check which base model they belong to.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

import index._torchvision_compat  # noqa: F401  (before any diffusers/open_clip import: they import torchvision)
from index.fs import expand_user
from pipeline.errors import PipelineInputError

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@runtime_checkable
class Decoder(Protocol):
    """Generates images from conditions of shape (B, condition_dim)."""

    @property
    def condition_dim(self) -> int:
        """Width of the condition vectors this decoder accepts (the encoder's embedding width)."""
        ...

    @property
    def model_id(self) -> str:
        """Readable name of the weights: ``<family>@<folder>`` (``tiny@bundled`` for the bundled decoder)."""
        ...

    @property
    def sha256(self) -> str:
        """Hex sha256 identifying the weights (see :func:`weights_sha256`)."""
        ...

    def generate(self, conditions: torch.Tensor, *, num_images_per_condition: int = 1, steps: int = 25,
                 guidance_scale: float = 2.0, generator: torch.Generator | None = None) -> list[Image.Image]:
        """Return ``B * num_images_per_condition`` images, grouped by condition (condition 0's images first).

        ``steps`` is diffusers' ``num_inference_steps``; the diffusers families also take ``steps=None`` (their
        ``num_inference_steps`` knob) and a list of generators, one per generated image.
        """
        ...


def check_generate_args(conditions: torch.Tensor, embedding_dim: int, *, num_images_per_condition: int,
                        steps: int, guidance_scale: float) -> torch.Tensor:
    """Validate the shared ``generate`` arguments and return the conditions as a float (B, d) tensor.

    Raises:
        PipelineInputError: a wrong shape, a non-finite value, or an out-of-range count/step/scale.
    """
    if not isinstance(conditions, torch.Tensor):
        conditions = torch.as_tensor(conditions)
    if conditions.ndim == 1:
        conditions = conditions[None]
    if conditions.ndim != 2 or conditions.shape[1] != embedding_dim or conditions.shape[0] == 0:
        raise PipelineInputError(
            f"conditions must have shape (B, {embedding_dim}); found {tuple(conditions.shape)}; "
            "pass one aggregated embedding per row from the same encoder the decoder was trained with"
        )
    if not torch.isfinite(conditions).all():
        raise PipelineInputError("conditions contain NaN or inf; pass finite embeddings")
    if num_images_per_condition < 1:
        raise PipelineInputError(f"num_images_per_condition must be >= 1; found {num_images_per_condition}")
    if steps < 1:
        raise PipelineInputError(f"steps must be >= 1; found {steps}")
    if guidance_scale < 0:
        raise PipelineInputError(f"guidance_scale must be >= 0; found {guidance_scale}")
    return conditions.float()


def check_generators(generator: GeneratorArg, count: int) -> torch.Generator | list[torch.Generator] | None:
    """One generator, None, or a sequence of exactly ``count`` generators (one per generated image).

    A sequence makes image i depend only on generator i, so a batch reproduces the same images as single calls.

    Raises:
        PipelineInputError: a sequence of the wrong length.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != count:
        raise PipelineInputError(
            f"generator must be one torch.Generator or one per generated image ({count}); found {len(generators)}"
        )
    return generators


class EmbeddingScaling(enum.Enum):
    """How the (unit-sphere) DP aggregate is mapped to a decoder's raw CLIP embedding scale (post-processing).

    NORMALIZE: each row becomes its direction times the target norm (zero rows stay zero); the default.
    MULTIPLY: each row is multiplied by the target norm (keeps the aggregate's own length, < 1 for spread neighbours).
    NONE: rows are passed as given.
    """

    NORMALIZE = "normalize"
    MULTIPLY = "multiply"
    NONE = "none"


def parse_embedding_scaling(value: EmbeddingScaling | str) -> EmbeddingScaling:
    """Parse a scaling mode given as the enum or its string value.

    Raises:
        PipelineInputError: an unknown mode.
    """
    try:
        return EmbeddingScaling(value)
    except ValueError:
        allowed = ", ".join(mode.value for mode in EmbeddingScaling)
        raise PipelineInputError(f"embedding_scaling must be one of {allowed}; found {value!r}") from None


def scale_conditions(conditions: torch.Tensor, scaling: EmbeddingScaling, norm: float) -> torch.Tensor:
    """Apply ``scaling`` with target ``norm`` to (B, d) conditions (see :class:`EmbeddingScaling`)."""
    if scaling is EmbeddingScaling.NONE:
        return conditions
    if scaling is EmbeddingScaling.MULTIPLY:
        return conditions * norm
    norms = conditions.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, conditions / norms.clamp_min(1e-12) * norm, conditions)


def as_array(value, what: str) -> torch.Tensor:
    """An array knob given in memory (tensor, ndarray, list) or as the path of a ``.npy`` file, as a float tensor.

    Raises:
        PipelineInputError: an unreadable file or a value that is not numeric.
    """
    if isinstance(value, str | os.PathLike):
        path = expand_user(value)
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise PipelineInputError(f"{what}: cannot read {path} as a .npy array ({type(err).__name__}); "
                                     "save it with numpy.save") from err
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise PipelineInputError(f"{what} must be a numeric array or a .npy file; found {type(value).__name__}") \
            from err


def mean_embedding_norm(public_embeddings, dim: int) -> float:
    """Mean L2 norm of raw (unnormalised) embeddings of PUBLIC images, shape (n, dim); never private ones.

    Args:
        public_embeddings: an (n, dim) array, or the path of a ``.npy`` file holding one.
        dim: the decoder's condition width.

    Raises:
        PipelineInputError: a wrong shape, non-finite values or an all-zero set.
    """
    rows = as_array(public_embeddings, "public_embeddings")
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != dim or not torch.isfinite(rows).all():
        raise PipelineInputError(
            f"public_embeddings must be a finite (n, {dim}) array of raw public image embeddings; "
            f"found shape {tuple(rows.shape)}"
        )
    norm = float(rows.norm(dim=1).mean())
    if not norm > 0:
        raise PipelineInputError("public_embeddings are all zero; pass raw embeddings of public images")
    return norm


def check_embedding_norm(norm: float) -> float:
    """Return ``norm`` as a float once it is finite and > 0.

    Raises:
        PipelineInputError: otherwise.
    """
    try:
        value = float(norm)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise PipelineInputError(f"embedding_norm must be a finite number > 0; found {norm!r}")
    return value


def _variant_of(path: Path) -> str | None:
    """'fp16' for ``model.fp16.safetensors`` or shard ``model.fp16-00001-of-00002.safetensors``; None for
    ``model.safetensors`` (diffusers' variant naming)."""
    parts = path.name.split(".")
    return parts[-2].split("-")[0] if len(parts) > 2 else None


def weights_sha256(folder: Path, *, variant: str | None = None) -> str:
    """sha256 over the weight files a diffusers ``from_pretrained`` reads from ``folder`` (any depth).

    Per directory the files of the requested ``variant`` are taken (else the plain ones, as diffusers falls back),
    ``.safetensors`` before other formats; the digest covers each file's relative path and content, in path order.
    """
    by_dir: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            by_dir.setdefault(path.parent, []).append(path)
    digest = hashlib.sha256()
    for files in by_dir.values():
        wanted = [p for p in files if _variant_of(p) == variant] or [p for p in files if _variant_of(p) is None]
        safetensors = [p for p in wanted if p.suffix == ".safetensors"]
        for path in safetensors or wanted:
            with path.open("rb") as handle:
                content = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{path.relative_to(folder).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def modules_sha256(modules: dict[str, torch.nn.Module]) -> str:
    """sha256 over the named modules' state dicts (name, dtype, shape, bytes): the identity of in-memory weights."""
    digest = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{prefix}.{name}\0{data.dtype}\0{tuple(tensor.shape)}\n".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class WeightsIdentity(abc.ABC):
    """``model_id`` and a once-computed ``sha256`` for a decoder loaded from a folder or built in memory.

    Subclasses set ``family`` and implement ``_weight_modules``; ``from_pretrained`` calls :meth:`_set_source`.
    """

    family: str = "decoder"
    _source: Path | None = None
    _source_label: str | None = None
    _variant: str | None = None

    def _set_source(self, folder: Path, *, label: str | None = None, variant: str | None = None) -> None:
        self._source, self._source_label, self._variant = folder, label, variant

    @abc.abstractmethod
    def _weight_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose weights identify an in-memory decoder, by name."""

    @property
    def model_id(self) -> str:
        """``<family>@<folder>`` (absolute path), ``<family>@bundled`` or ``<family>@memory`` (built in code)."""
        where = self._source_label or (str(self._source.resolve()) if self._source is not None else "memory")
        return f"{self.family}@{where}"

    @cached_property
    def sha256(self) -> str:
        """Hash of the weight files read from the folder (:func:`weights_sha256`), or of the in-memory state dicts
        for a decoder built in code (:func:`modules_sha256`); computed on first use, then cached."""
        if self._source is not None:
            return weights_sha256(self._source, variant=self._variant)
        return modules_sha256(self._weight_modules())
