"""What the diffusers-backed decoders share: offline loading, embedding scaling, and argument preparation.

Both families (Stable unCLIP, Kandinsky 2.2) condition on a raw CLIP image embedding, while the DP mechanism works
on unit embeddings (sensitivity 2/k). :class:`DiffusersDecoder` maps each aggregate to the decoder's embedding scale
(:class:`~pipeline.decoders.base.EmbeddingScaling`), repeats it once per requested image, and checks generators in
``generate``; each family only implements ``_run`` (its pipeline call). All of it is post-processing of an already private aggregate.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from pipeline.decoders.base import (
    EmbeddingScaling,
    GeneratorArg,
    WeightsIdentity,
    check_embedding_norm,
    check_generate_args,
    check_generators,
    parse_embedding_scaling,
    scale_conditions,
)
from pipeline.errors import PipelineInputError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Turn off diffusers' and transformers' loading progress bars for the block, then restore them.

    Loading is not a long job worth a bar, and those bars would break the CLI's one-line stderr rule.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in restore:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def parse_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``torch_dtype`` as diffusers takes it, from a dtype or its name ('float16', 'bfloat16', 'float32').

    Raises:
        PipelineInputError: an unknown name.
    """
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise PipelineInputError(f"torch_dtype must be one of {', '.join(_DTYPES)}; found {value!r}")
    return _DTYPES[name]


def load_pipeline(pipeline_cls, folder: Path, *, torch_dtype: torch.dtype | str | None = None,
                  variant: str | None = None, device: str | torch.device | None = None):
    """``pipeline_cls.from_pretrained(folder)`` from local files only (never the hub), quietly, on ``device``.

    Raises:
        PipelineInputError: the folder is not a loadable save of ``pipeline_cls``.
    """
    kwargs = {"torch_dtype": parse_dtype(torch_dtype)} if torch_dtype is not None else {}
    if variant is not None:
        kwargs["variant"] = variant
    # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, minus its stderr warning
    try:
        with quiet_loading():
            pipe = pipeline_cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:  # what diffusers/transformers raise for a bad snapshot
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PipelineInputError(
            f"decoder folder {folder} does not load as {pipeline_cls.__name__} ({first}); copy the complete "
            "diffusers snapshot (every component folder and its weights)"
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


class DiffusersDecoder(WeightsIdentity):
    """Shared state of the diffusers families: the embedding scale, the default steps and the wrapped pipeline.

    Args:
        pipe: the diffusers pipeline (components built or loaded).
        embedding_norm: the target norm of :class:`EmbeddingScaling` (the decoder's typical raw embedding norm).
        embedding_scaling: how the unit aggregate is mapped to that norm.
        num_inference_steps: denoising steps used when ``generate`` is called with ``steps=None``.
        height, width: output size in pixels (None = the family default from the UNet config).
    """

    default_steps = 25

    def __init__(self, pipe, *, embedding_norm: float, embedding_scaling: EmbeddingScaling | str,
                 num_inference_steps: int | None, height: int | None, width: int | None) -> None:
        steps = self.default_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise PipelineInputError(f"num_inference_steps must be >= 1; found {num_inference_steps}")
        for name, side in (("height", height), ("width", width)):
            if side is not None and int(side) < 1:
                raise PipelineInputError(f"{name} must be >= 1 pixel; found {side}")
        self.pipe = pipe
        self.embedding_norm = check_embedding_norm(embedding_norm)
        self.embedding_scaling = parse_embedding_scaling(embedding_scaling)
        self.num_inference_steps = steps
        self.height = height
        self.width = width

    @property
    @abc.abstractmethod
    def condition_dim(self) -> int:
        """Width of the image embeddings the family's UNet takes."""

    @property
    def embedding_dim(self) -> int:
        """Older name of :attr:`condition_dim`."""
        return self.condition_dim

    def _weight_modules(self) -> dict[str, torch.nn.Module]:
        return {name: module for name, module in self.pipe.components.items() if isinstance(module, torch.nn.Module)}

    def rescale(self, conditions: torch.Tensor) -> torch.Tensor:
        """Map (noisy) unit-sphere aggregates to the decoder's embedding scale (see :class:`EmbeddingScaling`)."""
        return scale_conditions(conditions, self.embedding_scaling, self.embedding_norm)

    @torch.no_grad()
    def generate(self, conditions: torch.Tensor, *, num_images_per_condition: int = 1, steps: int | None = None,
                 guidance_scale: float = 2.0, generator: GeneratorArg = None) -> list[Image.Image]:
        """Generate from aggregated unit embeddings: rescale, one row per image, one pipeline call.

        Args:
            conditions: (B, condition_dim) aggregated (already privatised) unit-sphere embeddings.
            num_images_per_condition: images per row; output is grouped by row.
            steps: denoising steps (diffusers' ``num_inference_steps``); None = this decoder's default.
            guidance_scale: classifier-free guidance scale; > 1 adds the family's negative branch, <= 1 runs the
                conditional branch only (diffusers semantics; 0 is not "unconditional" here).
            generator: one torch generator, or one per generated image (then a batch reproduces single calls).

        Returns:
            ``B * num_images_per_condition`` RGB PIL images.

        Raises:
            PipelineInputError: bad shapes or arguments.
        """
        steps = self.num_inference_steps if steps is None else steps
        cond = check_generate_args(conditions, self.condition_dim, num_images_per_condition=num_images_per_condition,
                                   steps=steps, guidance_scale=guidance_scale)
        generators = check_generators(generator, len(cond) * num_images_per_condition)
        param = next(self.pipe.unet.parameters())
        embeds = self.rescale(cond).repeat_interleave(num_images_per_condition, dim=0)
        embeds = embeds.to(device=param.device, dtype=param.dtype)
        return self._run(embeds, steps=steps, guidance_scale=guidance_scale, generator=generators)

    @abc.abstractmethod
    def _run(self, embeds: torch.Tensor, *, steps: int, guidance_scale: float,
             generator: torch.Generator | list[torch.Generator] | None) -> list[Image.Image]:
        """The family's pipeline call on (N, d) embeddings, one image each."""
